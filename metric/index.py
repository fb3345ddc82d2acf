"""``metric index``: the FAISS index of a metric run's reference set, and opening it again safely.

``RUN/index/`` holds three files, each written atomically (temp file + rename):

* ``index.faiss``: the FAISS index of the unit-length embeddings -- ``flat`` (exact inner product = cosine),
  ``ivf`` (IVFFlat: k-means cells, ``nprobe`` of them searched) or ``hnsw`` (HNSWFlat graph); all inner product.
* ``index.npz``: the sidecar, one row per indexed vector: ``ids`` (the FAISS id), ``labels``, ``split``
  (train/val of the classify run's split), ``source`` (index in the official 60k training set) and the
  ``model_hash`` of the embedding weights that produced the vectors.
* ``index.json``: kind, parameters, counts, the model hash and the sha256 of the other two files; written last,
  so it only ever describes a complete pair.

Opening checks that the pair belongs together and that the run's current embedding weights are those the
vectors came from: an index of a retrained (or resumed, or swapped) model is refused, not silently searched.
"""

from __future__ import annotations

import hashlib
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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---- building FAISS indexes ---------------------------------------------------------------------------------

def default_nlist(n: int) -> int:
    # FAISS's rule of thumb is ~4*sqrt(N) cells, and its k-means wants >= 39 training points per cell
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


# ivf lists probed per query unless told: at 1M clustered vectors (nlist 4,000) 8 probes recalled 0.61 of the exact
# top 10 and 32 recalled 0.99 at 0.24 ms; on real 24k embeddings (nlist 615) 0.87 vs 0.99 (BENCHMARKS.md, FAISS).
DEFAULT_NPROBE = 32


def make_index(kind: str, vectors: np.ndarray, nlist: int = 0, nprobe: int = 0, hnsw_m: int = 32,
               ef_construction: int = 80, ef_search: int = 64, gpu: bool = False, train_size: int = 0, seed: int = 0):
    """A CPU FAISS index of ``vectors`` (float32 unit rows) searched by inner product; built on the GPU where
    asked and possible (flat, ivf), then brought back to the CPU so it can be written. ``train_size``: the ivf
    k-means learns its cells from a random sample of that many vectors (0: all) -- on millions of vectors,
    training on all of them costs far more than adding them. ``nprobe`` 0: ``DEFAULT_NPROBE``, or every list when
    there are fewer."""
    import faiss

    n, d = vectors.shape
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "ivf":
        nlist = nlist or default_nlist(n)
        if not 1 <= nlist <= n:
            raise UserError(f"--nlist {nlist} must lie between 1 and the number of vectors ({n})")
        nprobe = nprobe or min(DEFAULT_NPROBE, nlist)
        if not 1 <= nprobe <= nlist:
            raise UserError(f"--nprobe {nprobe} must lie between 1 and --nlist ({nlist})")
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    elif kind == "hnsw":
        if hnsw_m < 2 or ef_construction < 1 or ef_search < 1:
            raise UserError("--hnsw-m must be at least 2, --ef-construction and --ef-search at least 1")
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
    else:
        raise UserError(f"unknown index kind {kind!r}; use flat, ivf or hnsw")
    built = to_gpu(index) if gpu and kind != "hnsw" else index
    if not built.is_trained:
        sample = vectors
        if train_size and train_size < n:
            sample = vectors[np.sort(np.random.default_rng(seed).choice(n, max(train_size, nlist), replace=False))]
        built.train(sample)
    built.add(vectors)
    index = faiss.index_gpu_to_cpu(built) if built is not index else index
    set_search_params(index, nprobe=nprobe, ef_search=ef_search)
    return index


def set_search_params(index, nprobe: int | None = None, ef_search: int | None = None) -> None:
    import faiss

    inner = faiss.downcast_index(index)
    if nprobe and hasattr(inner, "nprobe"):
        inner.nprobe = min(nprobe, inner.nlist)
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

@dataclass
class RunIndex:
    index: Any  # the FAISS index (on the GPU when opened for one)
    meta: dict
    ids: np.ndarray
    labels: np.ndarray
    split: np.ndarray
    source: np.ndarray

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


def reference_set(ckpt: dict, data_dir=None):
    """The images, labels, split names and dataset indices of the run's reference set: every item of the
    official training set (train + val) in the run's classes."""
    from fashionkit.data import load_split
    from fashionkit.metric.data import Split, in_classes, partition

    images, labels = load_split("train", data_dir)
    source = in_classes(np.arange(len(labels)), labels, ckpt["classes"])
    split = partition(labels, Split(**ckpt["split"]))[source]
    return images[source], labels.numpy()[source], split, source


def build_run_index(run: str | Path, opts: dict) -> dict:
    """Embed the reference set with the run's best weights and write ``RUN/index/``; returns the meta."""
    import faiss

    from fashionkit.device import select_device
    from fashionkit.metric.data import embed
    from fashionkit.metric.model import load_embedder
    from fashionkit.runs import open_run

    run = open_run(run, "metric")
    device = select_device(opts["device"])
    if opts["batch_size"] < 1:
        raise UserError(f"--batch-size must be at least 1, got {opts['batch_size']}")
    net, ckpt = load_embedder(run, device)
    images, labels, split, source = reference_set(ckpt, opts["data_dir"])
    start = time.perf_counter()
    vectors = embed(net, images, device, batch_size=opts["batch_size"]).numpy()
    embed_s = time.perf_counter() - start
    gpu = use_gpu(device)
    start = time.perf_counter()
    index = make_index(opts["index"], vectors, opts["nlist"], opts["nprobe"], opts["hnsw_m"],
                       opts["ef_construction"], opts["ef_search"], gpu=gpu, train_size=opts["ivf_train"])
    build_s = time.perf_counter() - start
    faiss_path, sidecar_path, meta_path = index_paths(run)
    meta_path.unlink(missing_ok=True)  # from here until the new meta is written, no half-new pair can be opened
    atomic_save(lambda tmp: faiss.write_index(index, tmp), faiss_path)

    def write_sidecar(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a temp path
            np.savez(f, ids=np.arange(len(labels), dtype=np.int64), labels=labels.astype(np.int64), split=split,
                     source=source.astype(np.int64), model_hash=np.array(ckpt["model_hash"]))

    atomic_save(write_sidecar, sidecar_path)
    inner = faiss.downcast_index(index)
    meta = {
        "kind": opts["index"], "metric": "inner_product", "count": int(index.ntotal), "dim": int(index.d),
        "model_hash": ckpt["model_hash"], "model_epoch": ckpt["epoch"], "classes": ckpt["classes"],
        "split": ckpt["split"], "params": {
            "nlist": int(getattr(inner, "nlist", 0)) or None, "nprobe": int(getattr(inner, "nprobe", 0)) or None,
            "hnsw_m": opts["hnsw_m"] if opts["index"] == "hnsw" else None,
            "ef_construction": opts["ef_construction"] if opts["index"] == "hnsw" else None,
            "ef_search": opts["ef_search"] if opts["index"] == "hnsw" else None},
        "built_on": "gpu" if gpu else "cpu", "embed_seconds": round(embed_s, 3), "build_seconds": round(build_s, 3),
        "files": {FAISS_FILE: _sha256(faiss_path), SIDECAR_FILE: _sha256(sidecar_path)},
    }
    atomic_write_json(meta_path, meta)
    return meta


def open_run_index(run: str | Path, model_hash: str, device="cpu", nprobe: int | None = None,
                   ef_search: int | None = None) -> RunIndex:
    """The run's index, checked: complete, consistent, and built by the embedding weights ``model_hash``."""
    import faiss

    run = Path(run)
    faiss_path, sidecar_path, meta_path = index_paths(run)
    if not meta_path.is_file():
        raise UserError(f"{run} has no FAISS index; build it with `metric index {run}`")
    meta = read_json(meta_path)
    for path in (faiss_path, sidecar_path):
        if not path.is_file() or _sha256(path) != meta.get("files", {}).get(path.name):
            raise UserError(f"the index files in {run / INDEX_DIR} do not belong together ({path.name} is missing or "
                            f"changed since index.json was written); rebuild with `metric index {run}`")
    if meta.get("model_hash") != model_hash:
        raise UserError(f"stale index: {run / INDEX_DIR} was built with embedding weights "
                        f"{str(meta.get('model_hash'))[:12]} (epoch {meta.get('model_epoch')}) but "
                        f"{run}/weights/best.pt now holds {model_hash[:12]}; "
                        f"the model changed since (retrained, resumed or replaced): rebuild with `metric index {run}`")
    index = faiss.read_index(str(faiss_path))
    with np.load(sidecar_path) as side:
        sidecar = {k: side[k] for k in ("ids", "labels", "split", "source", "model_hash")}
    if str(sidecar["model_hash"]) != model_hash or index.ntotal != len(sidecar["ids"]):
        raise UserError(f"the index in {run / INDEX_DIR} does not match its sidecar; rebuild with `metric index {run}`")
    set_search_params(index, nprobe=nprobe, ef_search=ef_search)
    if meta["kind"] != "hnsw" and use_gpu(device):
        index = to_gpu(index, getattr(device, "index", None) or 0)
    return RunIndex(index, meta, sidecar["ids"], sidecar["labels"], sidecar["split"], sidecar["source"])
