"""``fashionkit serve``: start the web page on uvicorn (one process; models load on first use and stay loaded)."""

from __future__ import annotations

import ipaddress
import sys

from fashionkit.config import DATA_DIR_HELP, Opt, add_options, resolve
from fashionkit.errors import UserError

OPTIONS: dict[str, Opt] = {
    "runs_dir": Opt(None, "root of the run directories to show: $FASHIONKIT_RUNS, or ./runs when unset", type=str),
    "host": Opt("127.0.0.1", "address to bind; anything but a loopback address makes the page reachable from "
                "other machines (it has no login)"),
    "port": Opt(8000, "TCP port"),
    "threads": Opt(1, "CPU threads per model call (torch, FAISS). Look-ups are one image each: requests run side by "
                   "side in uvicorn's thread pool instead, and OpenMP thread teams contending for busy cores stall",
                   least=1),
    "bundled": Opt(True, "also list the bundled models (fashionkit/models/) where installed"),
    "data_dir": Opt(None, DATA_DIR_HELP, type=str),
}

DESCRIPTION = """\
A local web page over your runs, for people who review ambiguous items:
  - runs: classify, metric and detect runs with their figures and plots, newest first (and the bundled models)
  - ambiguous items: a classifier's test items ranked by doubt (top-2 margin, resolver changes), filtered by
    true and predicted class; each item's page shows its probabilities, its nearest neighbours in a metric run's
    FAISS index and the resolver's decision, and links on to the neighbours' own pages
  - upload: an image -> the same item page (preprocessed as `classify predict` does)
  - video results: a `detect video` output -> frames of the annotated video, per-class counts, tracks
  - JSON under /api/... (the same data the pages show; /api/openapi.json describes it)
Everything is served locally (no CDN: it works offline); run directories are only read.

  fashionkit serve                       # http://127.0.0.1:8000, runs from ./runs
  fashionkit serve --runs-dir /data/runs --port 8080"""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def cmd_serve(args) -> int:
    from fashionkit.runs import runs_root

    opts = resolve(OPTIONS, {k: v for k, v in vars(args).items() if k in OPTIONS}, args.config)
    if not 1 <= opts["port"] <= 65535:
        raise UserError(f"--port must lie between 1 and 65535, got {opts['port']}")
    from fashionkit.serve.catalog import bundled_available

    root = runs_root(opts["runs_dir"])
    if not root.is_dir():
        if opts["runs_dir"] is not None or not (opts["bundled"] and bundled_available()):
            raise UserError(f"runs directory not found: {root}; pass --runs-dir DIR (the folder holding classify/, "
                            f"metric/, detect/)")
        print(f"note: no runs directory {root} yet: showing the bundled models only", file=sys.stderr)
    try:
        import uvicorn

        from fashionkit.serve.app import create_app
    except ModuleNotFoundError as e:
        raise UserError(f"fashionkit serve needs {e.name}: reinstall fashionkit (pip install -e .)") from None
    if not is_loopback(opts["host"]):
        print(f"warning: binding {opts['host']} makes the page and its API reachable from other machines; it has no "
              f"login and shows everything under {root}. Use the default 127.0.0.1 unless you mean that.",
              file=sys.stderr)
    check_bind(opts["host"], opts["port"])
    import faiss
    import torch

    torch.set_num_threads(opts["threads"])
    faiss.omp_set_num_threads(opts["threads"])
    app = create_app(root, opts["data_dir"], opts["bundled"])
    shown = f"[{opts['host']}]" if ":" in opts["host"] else opts["host"]
    print(f"fashionkit serve: runs from {root.resolve()} on http://{shown}:{opts['port']}/  (Ctrl+C stops)")
    uvicorn.run(app, host=opts["host"], port=opts["port"], log_level="warning")
    return 0


def check_bind(host: str, port: int) -> None:
    """Fail with one line before starting when the address cannot be bound (uvicorn would log and exit 1)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UserError(f"--host {host}: {e.strerror or e}; pass an address such as 127.0.0.1") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}; choose another --port") from None


def add_arguments(parser) -> None:
    add_options(parser, OPTIONS)
    parser.set_defaults(func=cmd_serve)
