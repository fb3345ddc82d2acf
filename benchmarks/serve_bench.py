"""``fashionkit serve`` under load: look-up API latency and throughput, and the ambiguous-items page.

    .venv/bin/python benchmarks/serve_bench.py                          # makes its runs in runs-serve-bench/
    .venv/bin/python benchmarks/serve_bench.py --runs-dir runs          # the newest runs of an existing runs dir
    .venv/bin/python benchmarks/serve_bench.py --requests 100 --quick   # a smoke run

The server is the real command, ``fashionkit serve --runs-dir DIR --port P`` (uvicorn, its default single worker
process), started in a subprocess on 127.0.0.1 and stopped at the end. The load comes from a small httpx/asyncio
client in this process (``--concurrency`` requests in flight, ``--requests`` in all, after ``--warmup``), so on a
2-core machine the client takes CPU from the server: the figures are a lower bound of what the server alone does.

Measured:

* look-up API, ``POST /api/lookup`` with a 28x28 PNG and with a 640x480 JPEG photo (a test item, dark on white,
  framed in a larger picture): class probabilities + 10 neighbours; p50/p95/max latency and requests/s;
* ambiguous-items page, ``GET /ambiguous`` for the 10,000 test items: the first request (the doubt ranking is
  computed: the classifier over 10,000 items, the kNN vote of the hard-class candidates) and then requests one at
  a time with different filters and pages (the ranking is cached): p50/p95 of the whole response, measured at the
  client on localhost, and as the server's own ``Server-Timing`` header says;
* the server's CPU time per request (from /proc): on a machine shared with other work, latency and requests/s
  say what the server got, CPU time says what a request costs.

Without ``--runs-dir`` it makes runs of the default architectures (a vgg-small classify run, a metric run with the
default 64-d embedding and head, a flat index of the full 24,000-item reference set). They are trained only
briefly: latency depends on the architectures and the index size, not on how good the weights are.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def make_runs(root: Path, quick: bool) -> None:
    """A vgg-small classify run, a default metric run from it, its flat index: the architectures serve loads
    (``quick``: the small 'simple' model instead, named quick)."""
    from fashionkit.classify.train import train as classify_train
    from fashionkit.metric.defaults import INDEX_OPTIONS
    from fashionkit.metric.index import build_run_index
    from fashionkit.metric.train import train as metric_train

    model = "simple" if quick else "vgg-small"
    clf, _ = classify_train({"model": model, "subset": 2000, "epochs": 1, "batch_size": 100, "test": False,
                             "runs_dir": str(root), "name": "quick" if quick else "bench"})
    emb, _ = metric_train({"from": str(clf), "subset": 2000, "epochs": 1, "steps_per_epoch": 5, "eval": False,
                           "runs_dir": str(root), "name": "quick" if quick else "bench"})
    build_run_index(emb, {n: o.default for n, o in INDEX_OPTIONS.items()})


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux /proc): what a request costs the server, whatever else
    shares the cores while it is measured."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentiles(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"n": len(ms), "p50_ms": round(float(np.percentile(a, 50)), 2),
            "p95_ms": round(float(np.percentile(a, 95)), 2), "max_ms": round(float(a.max()), 2),
            "mean_ms": round(float(a.mean()), 2)}


async def load(url: str, make_request, requests: int, concurrency: int, warmup: int, pid: int) -> dict:
    """``requests`` requests, ``concurrency`` in flight; latency of each, requests/s over the whole run, and the
    server's CPU time per request."""
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        for _ in range(warmup):
            r = await make_request(client)
            r.raise_for_status()
        latencies: list[float] = []
        queue = iter(range(requests))

        async def worker():
            for _ in queue:
                start = time.perf_counter()
                r = await make_request(client)
                latencies.append((time.perf_counter() - start) * 1000)
                if r.status_code != 200:
                    raise RuntimeError(f"{r.status_code}: {r.text[:200]}")

        start, cpu = time.perf_counter(), cpu_seconds(pid)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall, cpu = time.perf_counter() - start, cpu_seconds(pid) - cpu
    return {**percentiles(latencies), "requests_per_s": round(requests / wall, 1), "concurrency": concurrency,
            "server_cpu_ms_per_request": round(1000 * cpu / requests, 2)}


def images() -> dict[str, bytes]:
    from PIL import Image

    from fashionkit.data import load_split

    item = load_split("test")[0][17].numpy()
    small = io.BytesIO()
    Image.fromarray(item).save(small, format="PNG")
    photo = np.full((480, 640), 250, np.uint8)
    photo[40:440, 120:520] = 255 - np.asarray(Image.fromarray(item).resize((400, 400), Image.Resampling.BICUBIC))
    noisy = np.clip(photo + np.random.default_rng(0).normal(0, 3, photo.shape), 0, 255).astype(np.uint8)
    big = io.BytesIO()
    Image.fromarray(noisy).convert("RGB").save(big, format="JPEG", quality=90)
    return {"28x28 PNG": small.getvalue(), "640x480 JPEG": big.getvalue()}


def main() -> None:
    from faiss_bench import cpu_name

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs-dir", default=None, help="serve these runs (default: make them in runs-serve-bench/)")
    p.add_argument("--requests", type=int, default=200, help="look-up requests per image kind")
    p.add_argument("--concurrency", type=int, default=4, help="look-up requests in flight")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--page-requests", type=int, default=40, help="ambiguous-page requests (one at a time)")
    p.add_argument("--quick", action="store_true", help="make runs of the small 'simple' model (smoke test)")
    p.add_argument("--lookup-runs", default=None, metavar="CLASSIFIER,METRIC",
                   help="run ids the look-ups use (default: the server's choice)")
    p.add_argument("--page-runs", default=None, metavar="CLASSIFIER,METRIC",
                   help="run ids the ambiguous page uses (default: the server's choice). Its render time does not "
                   "depend on the model (the ranking is computed once), its first request does")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/serve_bench.json"))
    args = p.parse_args()

    root = Path(args.runs_dir or ROOT / "runs-serve-bench")
    name = "quick" if args.quick else "bench"
    if args.runs_dir is None and not (root / "metric" / name / "index" / "index.json").is_file():
        make_runs(root, args.quick)

    def runs_params(given: str | None) -> dict:
        if not given:
            return {}
        classifier, metric = given.split(",")
        return {"classifier": classifier, "metric": metric}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "fashionkit", "serve", "--runs-dir", str(root), "--port",
                               str(port), "--no-bundled"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        import httpx

        deadline = time.monotonic() + 120
        while True:
            try:
                runs = httpx.get(url + "/api/runs", timeout=5).json()
                break
            except httpx.TransportError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not start: {server.stdout.read()}") from None
                time.sleep(0.2)
        names = [r["id"] for r in runs["runs"]]
        look_params, page_params = runs_params(args.lookup_runs), runs_params(args.page_runs)
        rows = []
        for kind, data in images().items():
            async def lookup(client, data=data):
                return await client.post("/api/lookup", params=look_params, files={"file": ("item", data)})
            result = asyncio.run(load(url, lookup, args.requests, args.concurrency, args.warmup, server.pid))
            check = httpx.post(url + "/api/lookup", params=look_params, files={"file": ("item", data)}).json()
            assert len(check["neighbours"]) == 10 and len(check["probabilities"]) == 10
            rows.append({"what": f"POST /api/lookup, {kind}", **result, "runs": [check["classifier"],
                                                                                 check["metric"]]})
            print(rows[-1], flush=True)

        start = time.perf_counter()
        first = httpx.get(url + "/api/ambiguous", params=page_params, timeout=3600)
        first.raise_for_status()
        cold_s = time.perf_counter() - start
        chosen = first.json()
        print(f"ambiguous page runs: classifier {chosen['classifier']}, metric {chosen['metric']}; first request "
              f"(ranking {chosen['total']} items) {cold_s:.1f}s", flush=True)
        pages = [{}, {"true": "shirt"}, {"pred": "coat"}, {"show": "wrong"}, {"show": "changed"},
                 {"true": "0", "pred": "6"}, {"page": "20"}, {"page": "200"}]
        latencies, server_ms, cpu = [], [], cpu_seconds(server.pid)
        with httpx.Client(base_url=url, timeout=60) as client:
            for i in range(args.page_requests):
                start = time.perf_counter()
                r = client.get("/ambiguous", params={**page_params, **pages[i % len(pages)]})
                latencies.append((time.perf_counter() - start) * 1000)
                r.raise_for_status()
                server_ms.append(float(r.headers["server-timing"].split("dur=")[1]))
                assert "tile" in r.text or "No test item" in r.text
        rows.append({"what": f"GET /ambiguous ({chosen['total']:,} test items, 48 per page, ranking cached)",
                     **percentiles(latencies), "concurrency": 1,
                     "server_cpu_ms_per_request": round(1000 * (cpu_seconds(server.pid) - cpu) / len(latencies), 2),
                     "server_side": percentiles(server_ms), "runs": [chosen["classifier"], chosen["metric"]]})
        print(rows[-1], flush=True)
    finally:
        server.terminate()
        server.wait(30)

    import torch

    result = {"machine": {"cpu": cpu_name(), "client_torch_threads": torch.get_num_threads(),
                          "load_average_at_end": os.getloadavg()},
              "server_threads": "1 (fashionkit serve --threads default)",
              "server": "fashionkit serve (uvicorn, 1 worker process)", "client": "httpx.AsyncClient in one process",
              "runs": names, "ranking_first_request_s": round(cold_s, 2), "rows": rows,
              "args": vars(args)}
    lines = ["| request | concurrency | p50 ms | p95 ms | max ms | requests/s | server CPU ms/request |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['what']} | {r['concurrency']} | {r['p50_ms']} | {r['p95_ms']} | {r['max_ms']} | "
              f"{r.get('requests_per_s', '-')} | {r['server_cpu_ms_per_request']} |" for r in rows]
    result["markdown"] = "\n".join(lines)
    print(result["markdown"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
