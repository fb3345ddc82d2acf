"""A catalogue past RAM as floats: ivfpq with exact re-ranking from disk, one index vs shards in worker processes.

    nice -n 10 .venv/bin/python benchmarks/index_scale_bench.py                  # 10M x 64-d, 4 shards (long)
    .venv/bin/python benchmarks/index_scale_bench.py --quick                     # 100k vectors: a smoke run

Steps, each reading the vectors from disk in chunks so that no phase holds the catalogue as floats:

1. ``--vectors`` unit vectors in ``--dim`` dimensions around ``--clusters`` random centres (embeddings are
   clustered; uniform vectors would be an unrealistically hard case) are written chunk by chunk to
   ``WORKDIR/vectors.npy``; ``--queries`` fresh draws from the same mixture are the queries.
2. Ground truth: the exact top ``k`` by inner product, over the file in chunks (running merge).
3. Build: fashionkit's ``empty_index("ivfpq")`` trained on a random sample of ``--train`` vectors, the vectors
   added in chunks, written to ``WORKDIR/index.faiss``. Build time and peak RSS of the phase.
4. Search: the index memory-mapped (``read_index_mmap``), candidates re-ranked (``Reranked``) from the
   memory-mapped vectors.npy: recall@k against step 2, and queries/s of ``--queries``-sized batches, with and without
   re-ranking. Peak RSS of the phase (the mapped pages a search touches count in RSS: the page cache holding them
   is the kernel's, reclaimable, but it is reported as it is).
5. Shards: ``--shards`` indexes of consecutive blocks (the same trained quantiser and codebooks, as a catalogue
   split over machines would share them), each served by its own worker process (``ShardProcesses``) with its
   slice of vectors.npy; recall against exact search, agreement of the top ``k`` with the single index, latency.

Peak RSS is per phase (``/proc/self/clear_refs`` resets the high-water mark, Linux); ``--threads`` bounds faiss's
OpenMP threads. Writes JSON (``--out``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from faiss_bench import cpu_name, unit  # noqa: E402  (the same CPU naming and unit vectors as the FAISS benchmark)

CHUNK = 250_000


def rss_mib() -> dict:
    """Current and peak RSS (MiB) of this process, with the anonymous (heap) and file-backed parts."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            fields[key] = round(int(value.split()[0]) / 1024, 1)
    return fields


def reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # not Linux (or not allowed): the peak then covers the whole process so far


def mixture(n: int, centres: np.ndarray, spread: float, rng: np.random.Generator) -> np.ndarray:
    noise = rng.standard_normal((n, centres.shape[1]), dtype=np.float32) * (spread / np.sqrt(centres.shape[1]))
    return unit(centres[rng.integers(0, len(centres), n)] + noise)


def write_vectors(path: Path, n: int, centres: np.ndarray, spread: float, seed: int) -> int:
    """Write ``n`` vectors chunk by chunk; returns the byte offset of the data in the .npy file."""
    header = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, centres.shape[1]))
    offset = header.offset
    del header
    rng = np.random.default_rng(seed)
    with open(path, "r+b") as f:
        f.seek(offset)
        for start in range(0, n, CHUNK):
            f.write(mixture(min(CHUNK, n - start), centres, spread, rng).tobytes())
    return offset


def read_rows(path: Path, offset: int, d: int, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` read with plain file reads (no mapping: the pages do not stay in this process's RSS)."""
    with open(path, "rb") as f:
        f.seek(offset + start * d * 4)
        return np.fromfile(f, dtype=np.float32, count=(stop - start) * d).reshape(-1, d)


def exact_topk(path: Path, offset: int, n: int, d: int, queries: np.ndarray, k: int) -> np.ndarray:
    from fashionkit.metric.shards import merge_topk

    sims = np.full((len(queries), k), -np.inf, dtype=np.float32)
    ids = np.full((len(queries), k), -1, dtype=np.int64)
    for start in range(0, n, CHUNK):
        block = read_rows(path, offset, d, start, min(n, start + CHUNK))
        s = queries @ block.T
        top = np.argpartition(-s, min(k, s.shape[1] - 1), axis=1)[:, :k]
        sims, ids = merge_topk([sims, np.take_along_axis(s, top, 1)], [ids, top + start], k)
    return ids


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a[a >= 0]) & set(b)) / len(b) for a, b in zip(found, exact)]))


def timed_batches(search, queries: np.ndarray, k: int, repeats: int) -> tuple[np.ndarray, float]:
    """The answer and the median seconds of one pass over the queries in one batch (after a warm-up pass)."""
    found = search(queries, k)[1]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        search(queries, k)
        times.append(time.perf_counter() - start)
    return found, float(np.median(times))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vectors", type=int, default=10_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--clusters", type=int, default=1000,
                   help="centres of the synthetic mixture (10k vectors each at 10M, as faiss_bench.py's 1M / 100)")
    p.add_argument("--spread", type=float, default=1.0, help="noise around a centre (per-vector norm)")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--nlist", type=int, default=8192)
    p.add_argument("--nprobe", default="32", help="lists searched per query; several comma-separated values are "
                   "searched one after another on the one built index (the first also serves the shards)")
    p.add_argument("--pq-m", type=int, default=32)
    p.add_argument("--opq", action="store_true")
    p.add_argument("--rerank", type=int, default=100)
    p.add_argument("--train", type=int, default=400_000, help="vectors the ivf k-means and PQ codebooks learn from")
    p.add_argument("--shards", type=int, default=4, help="shards served by worker processes (0: skip)")
    p.add_argument("--threads", type=int, default=2, help="faiss OpenMP threads of the single index")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workdir", default=None, help="where vectors.npy and the indexes go (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep WORKDIR's files")
    p.add_argument("--quick", action="store_true", help="100k vectors, 200 queries, nlist 256, 20k training vectors, "
                   "50 clusters: a smoke run (sizes given explicitly still win)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/index_scale.json")
    args = p.parse_args(argv)
    if args.quick:
        quick = {"vectors": 100_000, "queries": 200, "nlist": 256, "train": 20_000, "clusters": 50}
        given = {a.split("=")[0].lstrip("-").replace("-", "_") for a in (argv or sys.argv[1:]) if a.startswith("--")}
        for key, value in quick.items():
            if key not in given:
                setattr(args, key, value)
    import shutil
    import tempfile

    import faiss

    from fashionkit.metric.index import Reranked, add_in_chunks, empty_index, read_index_mmap, set_search_params
    from fashionkit.metric.shards import ShardProcesses

    faiss.omp_set_num_threads(args.threads)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="index-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    n, d, k = args.vectors, args.dim, args.k
    nprobes = [int(v) for v in str(args.nprobe).split(",")]
    if any(not 1 <= v <= args.nlist for v in nprobes):
        raise SystemExit(f"--nprobe {args.nprobe}: each value must lie between 1 and --nlist ({args.nlist})")
    rng = np.random.default_rng(args.seed)
    centres = unit(rng.standard_normal((args.clusters, d), dtype=np.float32))
    queries = mixture(args.queries, centres, args.spread, np.random.default_rng(args.seed + 1))
    result = {"machine": {"cpu": cpu_name(), "threads": args.threads, "faiss": faiss.__version__},
              "config": {k_: v for k_, v in vars(args).items() if k_ not in ("out", "workdir", "keep")}}
    try:
        start = time.perf_counter()
        vectors_path = work / "vectors.npy"
        offset = write_vectors(vectors_path, n, centres, args.spread, args.seed + 2)
        result["generate_seconds"] = round(time.perf_counter() - start, 1)
        print(f"wrote {n:,} x {d} vectors ({vectors_path.stat().st_size / 2**30:.2f} GiB) in "
              f"{result['generate_seconds']}s", flush=True)

        start = time.perf_counter()
        exact = exact_topk(vectors_path, offset, n, d, queries, k)
        result["exact_seconds"] = round(time.perf_counter() - start, 1)
        print(f"exact top-{k} of {len(queries)} queries in {result['exact_seconds']}s", flush=True)

        reset_peak()
        start = time.perf_counter()
        index, _ = empty_index("ivfpq", n, d, args.nlist, nprobes[0], pq_m=args.pq_m, opq=args.opq,
                               train_size=args.train)
        take = min(1.0, args.train / n)
        blocks = (read_rows(vectors_path, offset, d, s, min(n, s + CHUNK)) for s in range(0, n, CHUNK))
        sample = np.concatenate([block[rng.random(len(block)) < take] for block in blocks])
        index.train(sample)
        del sample
        trained_s = time.perf_counter() - start
        template = faiss.clone_index(index)  # the trained, empty index the shards start from
        for s in range(0, n, CHUNK):
            add_in_chunks(index, read_rows(vectors_path, offset, d, s, min(n, s + CHUNK)))
        index_path = work / "index.faiss"
        faiss.write_index(index, str(index_path))
        build = {"seconds": round(time.perf_counter() - start, 1), "train_seconds": round(trained_s, 1),
                 "nlist": args.nlist, "pq_m": args.pq_m, "opq": args.opq,
                 "index_mib": round(index_path.stat().st_size / 2**20, 1), "rss_mib": rss_mib()}
        del index
        result["build"] = build
        print(f"built ivfpq in {build['seconds']}s (train {build['train_seconds']}s), index file "
              f"{build['index_mib']} MiB, peak RSS {build['rss_mib']['VmHWM']} MiB", flush=True)

        reset_peak()
        mapped = read_index_mmap(index_path)
        vectors = np.load(vectors_path, mmap_mode="r")
        rows = {}
        for probe in nprobes:
            set_search_params(mapped, nprobe=probe)
            for reranked, searcher in ((False, mapped), (True, Reranked(mapped, vectors, args.rerank))):
                name = f"ivfpq, nprobe {probe}" + (f" + rerank {args.rerank}" if reranked else "")
                found, seconds = timed_batches(searcher.search, queries, k, args.repeats)
                rows[name] = {"nprobe": probe, "recall": round(recall(found, exact), 4),
                              "batch_seconds": round(seconds, 4), "queries_per_s": round(len(queries) / seconds, 1)}
                if reranked and probe == nprobes[0]:
                    single = found  # what the shards (at the first nprobe, re-ranked) are compared with
                print(f"{name}: recall@{k} {rows[name]['recall']}, {rows[name]['queries_per_s']} q/s", flush=True)
        result["search"] = {"rows": rows, "rss_mib": rss_mib()}

        if args.shards:
            bounds = np.linspace(0, n, args.shards + 1).astype(int)
            paths = []
            for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
                shard = faiss.clone_index(template)
                for s in range(a, b, CHUNK):
                    add_in_chunks(shard, read_rows(vectors_path, offset, d, s, min(b, s + CHUNK)))
                paths.append(work / f"shard{i}.faiss")
                faiss.write_index(shard, str(paths[-1]))
                del shard
            ranges = list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))
            with ShardProcesses(paths, [vectors_path] * args.shards, rerank=args.rerank, nprobe=nprobes[0], threads=1,
                                vector_ranges=ranges) as workers:
                found, seconds = timed_batches(workers.search, queries, k, args.repeats)
            same = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, single)]))
            result["shards"] = {"shards": args.shards, "processes": args.shards, "rerank": args.rerank,
                                "nprobe": nprobes[0],
                                "recall": round(recall(found, exact), 4), "same_top_k_as_single": round(same, 4),
                                "batch_seconds": round(seconds, 4), "queries_per_s": round(len(queries) / seconds, 1),
                                "ms_per_batch": round(seconds * 1000, 1)}
            print(f"{args.shards} shards in {args.shards} processes: recall@{k} {result['shards']['recall']}, "
                  f"top-{k} overlap with one index {same:.4f}, {seconds * 1000:.0f} ms per batch", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    lines = [f"| index | recall@{k} | batch of {len(queries)}: ms | q/s |", "|---|---|---|---|"]
    for name, r in result["search"]["rows"].items():
        lines.append(f"| {name} | {r['recall']:.4f} | {r['batch_seconds'] * 1000:.0f} | {r['queries_per_s']:.0f} |")
    if "shards" in result:
        s = result["shards"]
        lines.append(f"| {s['shards']} shards, {s['processes']} processes, nprobe {s['nprobe']} + rerank "
                     f"{s['rerank']} | {s['recall']:.4f} | {s['ms_per_batch']:.0f} | {s['queries_per_s']:.0f} |")
    result["markdown"] = "\n".join(lines)
    print(result["markdown"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    raise SystemExit(main())
