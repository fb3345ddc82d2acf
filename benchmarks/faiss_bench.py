"""FAISS look-up speed and recall: flat vs IVF vs HNSW, and scikit-learn brute force, on the same data in one run.

    .venv/bin/python benchmarks/faiss_bench.py                                   # 24k real-size + 1M synthetic
    .venv/bin/python benchmarks/faiss_bench.py --run runs/metric/train           # real embeddings of a metric run
    .venv/bin/python benchmarks/faiss_bench.py --vectors 20000 --real-size 5000  # a small smoke run
    .venv/bin/python benchmarks/faiss_bench.py --methods ivf --nprobe 8,32,128   # recall bought per probe

Two data sets are measured:

* "reference": the size of the metric stage's reference set (the 24,000 training items of the four hard
  classes). With ``--run`` these are the run's real embeddings, queried with the embedded test items of the hard
  classes; otherwise synthetic vectors of that size.
* "synthetic": ``--vectors`` (1M by default) unit vectors in ``--dim`` dimensions drawn around ``--clusters``
  random centres (embeddings are clustered, and uniformly random vectors are an unrealistically hard case for
  approximate search); queries are fresh draws from the same mixture.

For each method: build time, batch-1 latency (``--single`` queries one at a time: median ms and queries/s),
batch-1000 throughput (queries/s over ``--queries`` queries in batches of 1000) and recall@k against exact
search. All FAISS indexes search by inner product on unit vectors, as ``metric index`` builds them (the same
``make_index``); scikit-learn's ``NearestNeighbors(algorithm="brute")`` uses the Euclidean metric, whose order on
unit vectors is the same. Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np


def cpu_name() -> str:
    """The CPU as lscpu names it, with its family/model and widest vector unit: results differ 3-4x between the
    CPUs this project has run on, and ``platform.machine()`` only says "x86_64"."""
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().split("\n\n")[0].splitlines()
                    if ":" in line)
    except OSError:
        return platform.processor() or platform.machine()
    info = {k.strip(): v.strip() for k, v in info.items()}
    flags = set(info.get("flags", "").split())
    simd = "avx512_bf16" if "avx512_bf16" in flags else "avx512f" if "avx512f" in flags else \
        "avx2" if "avx2" in flags else "no avx2"
    return f"{info.get('model name', platform.machine())} (family {info.get('cpu family')} model " \
           f"{info.get('model')}, {simd}, {os.cpu_count()} cpus)"


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, dim: int, clusters: int, rng: np.random.Generator, centres: np.ndarray | None = None,
              spread: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit vectors around ``clusters`` random unit centres (made in blocks, to keep memory flat)."""
    if centres is None:
        centres = unit(rng.standard_normal((clusters, dim), dtype=np.float32))
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        noise = rng.standard_normal((m, dim), dtype=np.float32) * (spread / np.sqrt(dim))
        out[start:start + m] = unit(centres[rng.integers(0, len(centres), m)] + noise)
    return out, centres


def real_embeddings(run: str, device: str) -> tuple[np.ndarray, np.ndarray]:
    """The reference vectors and test-item queries of a metric run, embedded with its best weights."""
    from fashionkit.data import load_split
    from fashionkit.device import select_device
    from fashionkit.metric.data import embed, in_classes
    from fashionkit.metric.index import reference_set
    from fashionkit.metric.model import load_embedder

    dev = select_device(device)
    net, ckpt = load_embedder(run, dev)
    images, _, _, _ = reference_set(ckpt)
    test_images, test_labels = load_split("test")
    queries = in_classes(np.arange(len(test_labels)), test_labels, ckpt["hard_classes"])
    return embed(net, images, dev).numpy(), embed(net, test_images[queries], dev).numpy()


def exact_neighbours(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    import faiss

    index = faiss.IndexFlatIP(base.shape[1])
    index.add(base)
    return index.search(queries, k)[1]


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k]) & set(t)) / k for f, t in zip(found, truth)]))


def time_queries(search, queries: np.ndarray, single: int, batch: int = 1000) -> dict:
    """Batch-1 latency over ``single`` queries one at a time, and batch-``batch`` throughput over all queries."""
    search(queries[:1])  # warm-up (thread pools, lazy allocations)
    times = []
    for q in queries[:single]:
        start = time.perf_counter()
        search(q[None])
        times.append(time.perf_counter() - start)
    start, found = time.perf_counter(), []
    for s in range(0, len(queries), batch):
        found.append(search(queries[s:s + batch]))
    total = time.perf_counter() - start
    return {"batch1_ms_median": 1000 * float(np.median(times)), "batch1_qps": len(times) / float(np.sum(times)),
            f"batch{batch}_qps": len(queries) / total, "found": np.concatenate(found)}


def bench_faiss(kind: str, base: np.ndarray, queries: np.ndarray, truth: np.ndarray, args,
                gpu: bool = False) -> list[dict]:
    """One row per search setting: ivf is built once and searched at every ``--nprobe`` value (the sweep shows the
    recall each probe buys); flat and hnsw give one row."""
    from fashionkit.metric.index import DEFAULT_NPROBE, default_nlist, make_index, set_search_params, to_gpu

    nlist = args.nlist or default_nlist(len(base))
    nprobes = [p or min(DEFAULT_NPROBE, nlist) for p in args.nprobe] if kind == "ivf" else [0]
    start = time.perf_counter()
    index = make_index(kind, base, nlist=nlist, nprobe=nprobes[0], hnsw_m=args.hnsw_m,
                       ef_construction=args.ef_construction, ef_search=args.ef_search, gpu=gpu,
                       train_size=args.ivf_train)
    if gpu:
        index = to_gpu(index)
    build = time.perf_counter() - start
    rows = []
    for nprobe in nprobes:
        set_search_params(index, nprobe=nprobe, ef_search=args.ef_search)
        got = time_queries(lambda q: index.search(q, args.k)[1], queries, args.single)
        recall = recall_at_k(got.pop("found"), truth)
        params = {"flat": "exact", "ivf": f"nlist {nlist}, nprobe {nprobe}",
                  "hnsw": f"M {args.hnsw_m}, efC {args.ef_construction}, efS {args.ef_search}"}[kind]
        rows.append({"method": f"faiss {kind}" + (" (gpu)" if gpu else ""), "params": params, "build_s": build,
                     **got, "recall": recall})
    return rows


def bench_sklearn(base: np.ndarray, queries: np.ndarray, truth: np.ndarray, args) -> dict:
    from sklearn.neighbors import NearestNeighbors

    start = time.perf_counter()
    nn = NearestNeighbors(n_neighbors=args.k, algorithm="brute", metric="euclidean", n_jobs=args.threads or None)
    nn.fit(base)
    build = time.perf_counter() - start
    got = time_queries(lambda q: nn.kneighbors(q, return_distance=False), queries, args.single)
    recall = recall_at_k(got.pop("found"), truth)
    return {"method": "sklearn brute", "params": "euclidean", "build_s": build, **got, "recall": recall}


def bench(name: str, base: np.ndarray, queries: np.ndarray, args) -> list[dict]:
    from fashionkit.metric.index import gpu_available

    print(f"\n{name}: {len(base):,} x {base.shape[1]} base vectors, {len(queries):,} queries", flush=True)
    truth = exact_neighbours(base, queries, args.k)
    rows = []
    for method in args.methods.split(","):
        variants = [False, True] if method in ("flat", "ivf") and gpu_available() else [False]
        for gpu in variants:
            got = ([bench_sklearn(base, queries, truth, args)] if method == "sklearn"
                   else bench_faiss(method, base, queries, truth, args, gpu))
            for row in got:
                row.update(data=name, n=len(base), dim=base.shape[1])
                print(f"  {row['method']:<18} {row['params']:<28} build {row['build_s']:8.2f}s  "
                      f"batch-1 {row['batch1_ms_median']:8.3f} ms  batch-1000 {row['batch1000_qps']:10,.0f} q/s  "
                      f"recall@{args.k} {row['recall']:.4f}", flush=True)
                rows.append(row)
    return rows


def markdown(rows: list[dict], k: int) -> str:
    lines = [f"| data | vectors | dim | method | parameters | build s | batch-1 ms (median) | batch-1 q/s | "
             f"batch-1000 q/s | recall@{k} |", "|---|---:|---:|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['data']} | {r['n']:,} | {r['dim']} | {r['method']} | {r['params']} | {r['build_s']:.2f} | "
                     f"{r['batch1_ms_median']:.3f} | {r['batch1_qps']:,.0f} | {r['batch1000_qps']:,.0f} | "
                     f"{r['recall']:.4f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default=None, help="metric run whose real embeddings form the reference-size data set")
    p.add_argument("--real-size", type=int, default=24_000, help="reference-size vectors when no --run is given")
    p.add_argument("--vectors", type=int, default=1_000_000, help="synthetic vectors (0: skip that data set)")
    p.add_argument("--dim", type=int, default=64, help="dimensions of the synthetic vectors")
    p.add_argument("--clusters", type=int, default=100, help="mixture components of the synthetic vectors")
    p.add_argument("--spread", type=float, default=1.0, help="length of the noise around a centre (unit length)")
    p.add_argument("--queries", type=int, default=1000, help="queries for batch throughput and recall")
    p.add_argument("--single", type=int, default=200, help="queries timed one at a time (batch 1)")
    p.add_argument("-k", "--k", type=int, default=10)
    p.add_argument("--methods", default="flat,ivf,hnsw,sklearn")
    p.add_argument("--nlist", type=int, default=0, help="ivf lists (0: 4*sqrt(N), at most N/39)")
    p.add_argument("--ivf-train", type=int, default=100_000, help="vectors the ivf k-means trains on (0: all)")
    p.add_argument("--nprobe", type=lambda v: [int(x) for x in v.split(",")], default=[0],
                   help="ivf lists probed per query (0: metric index's default); a comma list (8,32,128) sweeps "
                        "them on one built index")
    p.add_argument("--hnsw-m", type=int, default=32)
    p.add_argument("--ef-construction", type=int, default=80)
    p.add_argument("--ef-search", type=int, default=64)
    p.add_argument("--threads", type=int, default=0, help="threads for FAISS and scikit-learn (0: their default)")
    p.add_argument("--device", default="auto", help="where --run's embeddings are computed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/faiss_bench.json")
    args = p.parse_args()

    import faiss

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
    rng = np.random.default_rng(args.seed)
    rows = []
    if args.run:
        base, queries = real_embeddings(args.run, args.device)
        rows += bench(f"reference ({Path(args.run).name})", base, queries[:args.queries], args)
    elif args.real_size:
        base, centres = clustered(args.real_size, args.dim, args.clusters, rng, spread=args.spread)
        queries = clustered(args.queries, args.dim, 0, rng, centres, args.spread)[0]
        rows += bench("reference size (synthetic)", base, queries, args)
    if args.vectors:
        base, centres = clustered(args.vectors, args.dim, args.clusters, rng, spread=args.spread)
        rows += bench("synthetic", base, clustered(args.queries, args.dim, 0, rng, centres, args.spread)[0], args)
    table = markdown(rows, args.k)
    print("\n" + table)
    result = {"machine": {"cpu": cpu_name(), "threads": faiss.omp_get_max_threads(),
                          "faiss": faiss.__version__}, "args": vars(args), "rows": rows, "markdown": table}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
