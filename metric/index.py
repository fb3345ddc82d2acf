"""``metric index``: the FAISS index of a metric run's reference set, and opening it again safely.

``RUN/index/`` holds three files, each written atomically (temp file + rename):

* ``index.faiss``: the FAISS index of the unit-length embeddings -- ``flat`` (exact inner product = cosine),
  ``ivf`` (IVFFlat: k-means cells, ``nprobe`` of them searched), ``hnsw`` (HNSWFlat graph) or ``ivfpq`` (IVF cells
  holding product-quantised codes: ``pq_m`` bytes a vector instead of 4 per dimension, optionally behind an OPQ
  rotation); all inner product. Opened memory-mapped (faiss ``IO_FLAG_MMAP_IFC``): the inverted lists stay on
  disk and only the pages a query touches are read.
* ``index.npz``: the sidecar, one row per indexed vector: ``ids`` (the FAISS id), ``labels``, ``split``
  (train/val of the classify run's split, ``external`` for images added with ``--add``), ``source`` (index in the
  official 60k training set, -1 for added images), ``paths`` (the added image files, "" otherwise) and the
  ``model_hash`` of the embedding weights that produced the vectors.
* ``vectors.npy`` (``ivfpq`` with re-ranking only): the exact vectors in FAISS id order, memory-mapped at look-up;
  the ``rerank`` best PQ candidates of a query are re-ordered by their exact inner products read from it, so the
  exact vectors never have to fit in RAM.
* ``index.json``: kind, parameters, counts, the model hash and the sha256 of the other files; written last,
  so it only ever describes a complete set.

Opening checks that the pair belongs together and that the run's current embedding weights are those the
vectors came from: an index of a retrained (or resumed, or swapped) model is refused, not silently searched.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fashionkit.errors import UserError
from fashionkit.runs import atomic_save, atomic_write_json, read_json

INDEX_DIR, FAISS_FILE, SIDECAR_FILE, META_FILE = "index", "index.faiss", "index.npz", "index.json"
VECTORS_FILE = "vectors.npy"


def _sha256(path: Path) -> str:
    from fashionkit.runs import file_sha256

    return file_sha256(path)


# ---- building FAISS indexes ---------------------------------------------------------------------------------

def default_nlist(n: int) -> int:
    # FAISS's rule of thumb is ~4*sqrt(N) cells, and its k-means wants >= 39 training points per cell
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


# ivf lists probed per query unless told: at 1M clustered vectors (nlist 4,000) 8 probes recalled 0.61 of the exact
# top 10 and 32 recalled 0.99 at 0.24 ms; on real 24k embeddings (nlist 615) 0.87 vs 0.99 (BENCHMARKS.md, FAISS).
DEFAULT_NPROBE = 32
PQ_BITS = 8  # 256 centroids per sub-quantiser: one byte a code, the layout faiss scans fastest
PQ_MIN_TRAIN = 1 << PQ_BITS  # k-means cannot make 256 centroids from fewer points
DEFAULT_RERANK = 100  # PQ candidates re-ordered by exact distance per query (the look-up's k, if larger)
ADD_CHUNK = 100_000  # vectors handed to faiss per add() call: bounded temporary memory on any input size


def divisors(d: int) -> list[int]:
    return [m for m in range(1, d + 1) if d % m == 0]


def default_pq_m(d: int) -> int:
    """Sub-quantisers of 2 dimensions each (32 bytes a 64-d vector, 8x smaller than floats), or the nearest
    divisor of ``d`` below that: at 2 dimensions a sub-quantiser its 256 centroids leave little error for
    re-ranking to fix."""
    return max(m for m in divisors(d) if m <= max(1, d // 2))


def check_ivfpq(n: int, d: int, nlist: int, pq_m: int, train_size: int) -> None:
    """Refuse an ivfpq configuration that cannot be built, saying what would fit."""
    if n < PQ_MIN_TRAIN:
        raise UserError(f"ivfpq needs at least {PQ_MIN_TRAIN} vectors to train its {PQ_MIN_TRAIN}-entry codebooks, "
                        f"got {n}; index so few with --index flat")
    if not 1 <= nlist <= n:
        raise UserError(f"--nlist {nlist} does not fit {n} vectors (at most one list per vector, and k-means "
                        f"wants 39 per list); use --nlist {default_nlist(n)} or less")
    if pq_m < 1 or d % pq_m:
        fits = ", ".join(str(m) for m in divisors(d) if m <= 64)
        raise UserError(f"--pq-m {pq_m} does not divide the {d} embedding dimensions; use one of {fits}")
    trained = min(train_size, n) if train_size else n
    if trained < max(nlist, PQ_MIN_TRAIN):
        raise UserError(f"--ivf-train {train_size} vectors cannot train {nlist} lists and {PQ_MIN_TRAIN}-entry "
                        f"codebooks; use --ivf-train {max(nlist, PQ_MIN_TRAIN)} or more (0: all {n})")


def empty_index(kind: str, n: int, d: int, nlist: int = 0, nprobe: int = 0, hnsw_m: int = 32,
                ef_construction: int = 80, pq_m: int = 0, opq: bool = False, train_size: int = 0):
    """An untrained CPU FAISS index of ``kind`` for ``n`` vectors of ``d`` dimensions, searched by inner product,
    with its options checked; returns ``(index, nprobe)`` (0 for kinds without lists)."""
    import faiss

    if kind == "flat":
        return faiss.IndexFlatIP(d), 0
    if kind in ("ivf", "ivfpq"):
        nlist = nlist or default_nlist(n)
        if kind == "ivfpq":
            pq_m = pq_m or default_pq_m(d)
            check_ivfpq(n, d, nlist, pq_m, train_size)
        elif not 1 <= nlist <= n:
            raise UserError(f"--nlist {nlist} must lie between 1 and the number of vectors ({n})")
        nprobe = nprobe or min(DEFAULT_NPROBE, nlist)
        if not 1 <= nprobe <= nlist:
            raise UserError(f"--nprobe {nprobe} must lie between 1 and --nlist ({nlist})")
        if kind == "ivf":
            return faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT), nprobe
        # OPQ rotates the space so each sub-quantiser gets an equal share of the variance; a rotation keeps
        # inner products, so the index stays an inner-product one
        factory = f"{f'OPQ{pq_m},' if opq else ''}IVF{nlist},PQ{pq_m}x{PQ_BITS}"
        return faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT), nprobe
    if kind == "hnsw":
        if hnsw_m < 2 or ef_construction < 1:
            raise UserError("--hnsw-m must be at least 2, --ef-construction and --ef-search at least 1")
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        return index, 0
    raise UserError(f"unknown index kind {kind!r}; use flat, ivf, hnsw or ivfpq")


def training_sample(vectors, train_size: int, minimum: int, seed: int = 0) -> np.ndarray:
    """A sorted random sample of ``train_size`` rows (at least ``minimum``; all when that is every row): sorted,
    so a memory-mapped ``vectors`` is read front to back."""
    n = len(vectors)
    if not train_size or max(train_size, minimum) >= n:
        return np.ascontiguousarray(vectors[:], dtype=np.float32)
    rows = np.sort(np.random.default_rng(seed).choice(n, max(train_size, minimum), replace=False))
    return np.ascontiguousarray(vectors[rows], dtype=np.float32)


def add_in_chunks(index, vectors, chunk: int = ADD_CHUNK) -> None:
    for start in range(0, len(vectors), chunk):
        index.add(np.ascontiguousarray(vectors[start:start + chunk], dtype=np.float32))


def make_index(kind: str, vectors, nlist: int = 0, nprobe: int = 0, hnsw_m: int = 32,
               ef_construction: int = 80, ef_search: int = 64, gpu: bool = False, train_size: int = 0, seed: int = 0,
               pq_m: int = 0, opq: bool = False):
    """A CPU FAISS index of ``vectors`` (float32 unit rows; an array or a memory-mapped .npy, added in chunks)
    searched by inner product; built on the GPU where asked and possible (flat, ivf, ivfpq without OPQ), then
    brought back to the CPU so it can be written. ``train_size``: the ivf/ivfpq k-means learns its cells from a
    random sample of that many vectors (0: all) -- on millions of vectors, training on all of them costs far more
    than adding them. ``nprobe`` 0: ``DEFAULT_NPROBE``, or every list when there are fewer."""
    import faiss

    n, d = vectors.shape
    if ef_search < 1:
        raise UserError("--hnsw-m must be at least 2, --ef-construction and --ef-search at least 1")
    index, nprobe = empty_index(kind, n, d, nlist, nprobe, hnsw_m, ef_construction, pq_m, opq, train_size)
    built = index
    if gpu and kind in ("flat", "ivf") or gpu and kind == "ivfpq" and not opq:
        built = to_gpu(index)
    if not built.is_trained:
        ivf = faiss.extract_index_ivf(index)
        built.train(training_sample(vectors, train_size, max(ivf.nlist, PQ_MIN_TRAIN if kind == "ivfpq" else 1),
                                    seed))
    add_in_chunks(built, vectors)
    index = faiss.index_gpu_to_cpu(built) if built is not index else index
    set_search_params(index, nprobe=nprobe, ef_search=ef_search)
    return index


def rerank_exact(queries: np.ndarray, candidates: np.ndarray, vectors, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of each query's ``candidates`` (FAISS ids, -1 for none) by exact inner product with their
    rows of ``vectors`` (an array or a memory-mapped .npy: the rows are read in id order, so a file on disk is
    read forwards); returns ``(similarities, ids)`` as FAISS's search does, -inf / -1 where fewer than ``k``."""
    nq, kk = candidates.shape
    valid = candidates >= 0
    flat = np.where(valid, candidates, 0).ravel()
    order = np.argsort(flat, kind="stable")
    rows = np.empty((len(flat), vectors.shape[1]), dtype=np.float32)
    rows[order] = vectors[flat[order]]
    sims = np.matmul(rows.reshape(nq, kk, -1), queries[:, :, None])[:, :, 0]
    sims[~valid] = -np.inf
    k = min(k, kk)
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < kk else np.broadcast_to(np.arange(kk), (nq, kk))
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(sims, top, 1), axis=1, kind="stable"), 1)
    ids = np.take_along_axis(candidates, top, 1)
    return np.take_along_axis(sims, top, 1), np.where(ids >= 0, ids, -1)


class Reranked:
    """A FAISS index whose top ``rerank`` candidates are re-ordered by exact inner products with ``vectors`` (the
    exact rows in FAISS id order, typically memory-mapped from disk, so they never need to fit in RAM). Searches
    like a FAISS index: ``search(queries, k) -> (similarities, ids)``."""

    def __init__(self, index, vectors, rerank: int = DEFAULT_RERANK):
        if len(vectors) != index.ntotal:
            raise UserError(f"the exact vectors ({len(vectors)}) do not match the index ({index.ntotal})")
        self.index, self.vectors, self.rerank = index, vectors, rerank

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    @property
    def d(self) -> int:
        return self.index.d

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        kk = min(max(self.rerank, k), self.ntotal)
        _, candidates = self.index.search(queries, kk)
        return rerank_exact(queries, candidates, self.vectors, k)


def set_search_params(index, nprobe: int | None = None, ef_search: int | None = None) -> None:
    import faiss

    inner = faiss.downcast_index(index)
    ivf = faiss.try_extract_index_ivf(index)  # also behind an OPQ rotation (an IndexPreTransform)
    if nprobe and ivf is not None:
        ivf.nprobe = min(nprobe, ivf.nlist)
    if ef_search and hasattr(inner, "hnsw"):
        inner.hnsw.efSearch = ef_search


def gpu_available() -> bool:
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


_GPU_RESOURCES: list = []  # a GPU index uses its resources object; keep it alive as long as the process


def to_gpu(index, device_id: int = 0):
    import faiss

    if not _GPU_RESOURCES:
        _GPU_RESOURCES.append(faiss.StandardGpuResources())
    return faiss.index_cpu_to_gpu(_GPU_RESOURCES[0], device_id, index)


def use_gpu(device) -> bool:
    """Search/build on the GPU when torch runs on CUDA and this faiss build has GPU support (faiss-gpu)."""
    if getattr(device, "type", str(device)) != "cuda":
        return False
    if not gpu_available():
        print("note: this faiss build has no GPU support (install fashionkit[gpu]); FAISS runs on the CPU",
              file=sys.stderr)
        return False
    return True


# ---- the index of a metric run ------------------------------------------------------------------------------

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".gif")
EXTERNAL = "external"  # the split name of images added with --add


@dataclass
class RunIndex:
    index: Any  # the FAISS index (on the GPU when opened for one), or a Reranked one around it
    meta: dict
    ids: np.ndarray
    labels: np.ndarray  # -1 for added images (no class known)
    split: np.ndarray
    source: np.ndarray  # index in the official training set, -1 for added images
    paths: np.ndarray | None = None  # the added image files, "" for dataset items

    @property
    def size(self) -> int:
        return len(self.ids)

    def check_k(self, k: int) -> None:
        """Callers check ``-k`` before embedding their queries, so a bad k fails before any work is done."""
        if not 1 <= k <= self.size:
            raise UserError(f"-k {k} is larger than the index ({self.size} items)" if k > self.size else
                            f"-k must be at least 1, got {k}")

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(distances, rows)`` of the ``k`` nearest items, nearest first. Distances are Euclidean between unit
        vectors, ``sqrt(2 - 2 cos)``, in [0, 2]; rows index the sidecar arrays, -1 where an approximate index
        found fewer than ``k``."""
        self.check_k(k)
        sims, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        dist = np.sqrt(np.clip(2.0 - 2.0 * sims, 0.0, 4.0))
        dist[rows < 0] = np.inf
        return dist, rows


def index_paths(run: Path) -> tuple[Path, Path, Path]:
    root = Path(run) / INDEX_DIR
    return root / FAISS_FILE, root / SIDECAR_FILE, root / META_FILE


def vectors_path(run: Path) -> Path:
    return Path(run) / INDEX_DIR / VECTORS_FILE


def reference_set(ckpt: dict, data_dir=None):
    """The images, labels, split names and dataset indices of the run's reference set: every item of the
    official training set (train + val) in the run's classes."""
    from fashionkit.data import load_split
    from fashionkit.metric.data import Split, in_classes, partition

    images, labels = load_split("train", data_dir)
    source = in_classes(np.arange(len(labels)), labels, ckpt["classes"])
    split = partition(labels, Split(**ckpt["split"]))[source]
    return images[source], labels.numpy()[source], split, source


def _write_sidecar(path: Path, labels, split, source, paths, model_hash: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a temp path
            np.savez(f, ids=np.arange(len(labels), dtype=np.int64), labels=np.asarray(labels, dtype=np.int64),
                     split=np.asarray(split), source=np.asarray(source, dtype=np.int64), paths=np.asarray(paths),
                     model_hash=np.array(model_hash))

    atomic_save(write, path)


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append .npy to a temp path
        np.save(f, array)


def _index_params(index, opts: dict) -> dict:
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    pq = getattr(faiss.downcast_index(ivf), "pq", None) if ivf is not None else None
    kind = opts["index"]
    return {"nlist": int(ivf.nlist) if ivf is not None else None,
            "nprobe": int(ivf.nprobe) if ivf is not None else None,
            "pq_m": int(pq.M) if pq is not None else None, "opq": bool(opts["opq"]) if kind == "ivfpq" else None,
            "rerank": opts["rerank"] if kind == "ivfpq" else None,
            "hnsw_m": opts["hnsw_m"] if kind == "hnsw" else None,
            "ef_construction": opts["ef_construction"] if kind == "hnsw" else None,
            "ef_search": opts["ef_search"] if kind == "hnsw" else None}


def build_run_index(run: str | Path, opts: dict) -> dict:
    """Embed the reference set with the run's best weights and write ``RUN/index/``; returns the meta."""
    import faiss

    from fashionkit.device import select_device
    from fashionkit.metric.data import embed
    from fashionkit.metric.model import load_embedder
    from fashionkit.runs import open_run

    run = open_run(run, "metric")
    device = select_device(opts["device"])
    net, ckpt = load_embedder(run, device)
    images, labels, split, source = reference_set(ckpt, opts["data_dir"])
    start = time.perf_counter()
    vectors = embed(net, images, device, batch_size=opts["batch_size"]).numpy()
    embed_s = time.perf_counter() - start
    gpu = use_gpu(device)
    start = time.perf_counter()
    index = make_index(opts["index"], vectors, opts["nlist"], opts["nprobe"], opts["hnsw_m"],
                       opts["ef_construction"], opts["ef_search"], gpu=gpu, train_size=opts["ivf_train"],
                       pq_m=opts["pq_m"], opq=opts["opq"])
    build_s = time.perf_counter() - start
    faiss_path, sidecar_path, meta_path = index_paths(run)
    meta_path.unlink(missing_ok=True)  # from here until the new meta is written, no half-new set can be opened
    atomic_save(lambda tmp: faiss.write_index(index, tmp), faiss_path)
    _write_sidecar(sidecar_path, labels, split, source, np.full(len(labels), ""), ckpt["model_hash"])
    files = [faiss_path, sidecar_path]
    if opts["index"] == "ivfpq" and opts["rerank"]:
        atomic_save(lambda tmp: _save_npy(tmp, vectors), vectors_path(run))
        files.append(vectors_path(run))
    else:
        vectors_path(run).unlink(missing_ok=True)
    meta = {
        "kind": opts["index"], "metric": "inner_product", "count": int(index.ntotal), "dim": int(index.d),
        "model_hash": ckpt["model_hash"], "model_epoch": ckpt["epoch"], "classes": ckpt["classes"],
        "split": ckpt["split"], "params": _index_params(index, opts), "added": 0,
        "built_on": "gpu" if gpu else "cpu", "embed_seconds": round(embed_s, 3), "build_seconds": round(build_s, 3),
        "files": {path.name: _sha256(path) for path in files},
    }
    atomic_write_json(meta_path, meta)
    return meta


def _checked_meta(run: Path, model_hash: str) -> dict:
    """index.json of the run, once its files are complete and consistent and were built by ``model_hash``."""
    faiss_path, sidecar_path, meta_path = index_paths(run)
    if not meta_path.is_file():
        raise UserError(f"{run} has no FAISS index; build it with `metric index {run}`")
    meta = read_json(meta_path)
    files = meta.get("files", {})
    for path in (faiss_path, sidecar_path, *([vectors_path(run)] if VECTORS_FILE in files else [])):
        if not path.is_file() or _sha256(path) != files.get(path.name):
            raise UserError(f"the index files in {run / INDEX_DIR} do not belong together ({path.name} is missing or "
                            f"changed since index.json was written); rebuild with `metric index {run}`")
    if meta.get("model_hash") != model_hash:
        raise UserError(f"stale index: {run / INDEX_DIR} was built with embedding weights "
                        f"{str(meta.get('model_hash'))[:12]} (epoch {meta.get('model_epoch')}) but "
                        f"{run}/weights/best.pt now holds {model_hash[:12]}; "
                        f"the model changed since (retrained, resumed or replaced): rebuild with `metric index {run}`")
    return meta


def _read_sidecar(path: Path) -> dict:
    with np.load(path) as side:
        sidecar = {k: side[k] for k in ("ids", "labels", "split", "source", "model_hash")}
        sidecar["paths"] = side["paths"] if "paths" in side.files else np.full(len(sidecar["ids"]), "")
    return sidecar


def read_index_mmap(path: str | Path):
    """A FAISS index file opened memory-mapped: its inverted lists / codes stay in the page cache, read as
    queries touch them, instead of being copied into the process (faiss's in-place ``IO_FLAG_MMAP_IFC``; the
    older ``IO_FLAG_MMAP`` maps the inverted lists of an IVF index only)."""
    import faiss

    return faiss.read_index(str(path), getattr(faiss, "IO_FLAG_MMAP_IFC", faiss.IO_FLAG_MMAP))


def open_run_index(run: str | Path, model_hash: str, device="cpu", nprobe: int | None = None,
                   ef_search: int | None = None, rerank: int | None = None) -> RunIndex:
    """The run's index, checked: complete, consistent, and built by the embedding weights ``model_hash``. On the
    CPU it is memory-mapped; an ivfpq index with exact vectors re-ranks its candidates from them."""
    import faiss

    run = Path(run)
    faiss_path, sidecar_path, _ = index_paths(run)
    meta = _checked_meta(run, model_hash)
    gpu = meta["kind"] != "hnsw" and use_gpu(device)
    index = faiss.read_index(str(faiss_path)) if gpu else read_index_mmap(faiss_path)
    sidecar = _read_sidecar(sidecar_path)
    if str(sidecar["model_hash"]) != model_hash or index.ntotal != len(sidecar["ids"]):
        raise UserError(f"the index in {run / INDEX_DIR} does not match its sidecar; rebuild with `metric index {run}`")
    set_search_params(index, nprobe=nprobe, ef_search=ef_search)
    if gpu:
        index = to_gpu(index, getattr(device, "index", None) or 0)
    if VECTORS_FILE in meta["files"]:
        rerank = (meta["params"].get("rerank") or DEFAULT_RERANK) if rerank is None else rerank
        if rerank:
            index = Reranked(index, np.load(vectors_path(run), mmap_mode="r"), rerank)
    return RunIndex(index, meta, sidecar["ids"], sidecar["labels"], sidecar["split"], sidecar["source"],
                    sidecar["paths"])


# ---- adding external images ---------------------------------------------------------------------------------

def image_files(paths: list[str]) -> list[Path]:
    """``--add`` arguments -> image files: files as given, directories as the images directly inside them."""
    found: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not inside:
                raise UserError(f"--add: {path} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            found += inside
        elif path.is_file():
            found.append(path)
        else:
            raise UserError(f"--add: no such file or directory: {path}")
    return found


def add_to_run_index(run: str | Path, files: list[str], opts: dict) -> dict:
    """Embed image files with the run's best weights and add them to its index, ``batch_size`` images at a time
    (the images and their float vectors are never all in memory; an ivfpq index holds only their codes, and their
    exact vectors stream to a new vectors.npy). The index must come from the same weights: embeddings of two
    models are not comparable, so a stale index is refused. New files are written next to the old ones and
    swapped in only once every image is embedded; returns the new meta."""
    import faiss

    from fashionkit.data.images import read_item_images
    from fashionkit.device import select_device
    from fashionkit.metric.data import embed
    from fashionkit.metric.model import load_embedder
    from fashionkit.runs import open_run

    run = open_run(run, "metric")
    paths = image_files(files)
    device = select_device(opts["device"])
    net, ckpt = load_embedder(run, device)
    meta = _checked_meta(run, ckpt["model_hash"])  # weights changed since the build: refused, not mixed
    faiss_path, sidecar_path, meta_path = index_paths(run)
    index = faiss.read_index(str(faiss_path))
    sidecar = _read_sidecar(sidecar_path)
    old = int(index.ntotal)
    keep_vectors = VECTORS_FILE in meta["files"]
    tmp_vectors = vectors_path(run).with_name(f".{VECTORS_FILE}.adding")
    start = time.perf_counter()
    try:
        if keep_vectors:
            old_vectors = np.load(vectors_path(run), mmap_mode="r")
            out = np.lib.format.open_memmap(tmp_vectors, mode="w+", dtype=np.float32,
                                            shape=(old + len(paths), index.d))
            for s in range(0, old, ADD_CHUNK):
                stop = min(old, s + ADD_CHUNK)
                out[s:stop] = old_vectors[s:stop]
            del old_vectors
        for s in range(0, len(paths), opts["batch_size"]):
            chunk = embed(net, read_item_images(paths[s:s + opts["batch_size"]]), device,
                          batch_size=opts["batch_size"]).numpy()
            if chunk.shape[1] != index.d:
                raise UserError(f"the run embeds {chunk.shape[1]}-d vectors but the index holds {index.d}-d ones; "
                                f"rebuild with `metric index {run}`")
            index.add(np.ascontiguousarray(chunk, dtype=np.float32))
            if keep_vectors:
                out[old + s:old + s + len(chunk)] = chunk
        if keep_vectors:
            out.flush()
            del out
        embed_s = time.perf_counter() - start
        meta_path.unlink()  # from here until the new meta is written, no half-new set can be opened
        atomic_save(lambda tmp: faiss.write_index(index, tmp), faiss_path)
        n = len(paths)
        _write_sidecar(sidecar_path, np.concatenate([sidecar["labels"], np.full(n, -1)]),
                       np.concatenate([sidecar["split"], np.full(n, EXTERNAL)]),
                       np.concatenate([sidecar["source"], np.full(n, -1)]),
                       np.concatenate([sidecar["paths"], np.array([str(p) for p in paths])]), ckpt["model_hash"])
        if keep_vectors:
            tmp_vectors.replace(vectors_path(run))
    finally:
        tmp_vectors.unlink(missing_ok=True)
    meta["count"] = int(index.ntotal)
    meta["added"] = int(meta.get("added", 0)) + len(paths)
    meta["last_add"] = {"images": len(paths), "seconds": round(embed_s, 3)}
    meta["files"] = {path.name: _sha256(path) for path in
                     (faiss_path, sidecar_path, *([vectors_path(run)] if keep_vectors else []))}
    atomic_write_json(meta_path, meta)
    return meta
