"""The web app: pages (Jinja2, server-rendered) and the JSON API under ``/api/...`` they are built from.

Each page calls the same function as its API route (``runs_payload``, ``ambiguous_payload``, ``item_payload``,
``video_payload``) and renders the result, so what a script reads is what a person sees.

    GET  /                               runs, newest first (classify, metric, detect, video results, bundled)
    GET  /runs/<group>/<name>            one run: headline figures and plots (a video result: its video page)
    GET  /runs/<group>/<name>/files/<f>  a plot or the annotated video, from the run's allow-list only
    GET  /ambiguous?classifier=&metric=&true=&pred=&show=&page=    test items ranked by doubt
    GET  /items/<test|train>/<i>?classifier=&metric=&k=            item page
    GET  /upload, POST /upload           an uploaded image -> its item page
    GET  /img/<test|train>/<i>.png       a dataset item, 28x28 PNG (the pages upscale it pixel-exact)
    GET  /video/<group>/<name>/frames/<n>.jpg    one frame of an annotated video
    GET  /api/runs, /api/runs/<group>/<name>, /api/ambiguous, /api/items/<split>/<i>, /api/video/<group>/<name>
    POST /api/lookup                     multipart ``file`` -> class probabilities + neighbours
"""

from __future__ import annotations

import base64
import io
import json
import math
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from fashionkit.errors import UserError
from fashionkit.serve.catalog import Catalog, Run
from fashionkit.serve.lookups import DEFAULT_K, BrokenRun, Lookups

HERE = Path(__file__).resolve().parent
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_UPLOAD_PIXELS = 40_000_000  # a 40-megapixel photo decodes in well under a second; more is refused
UPLOAD_FORMATS = {"PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM"}
PER_PAGE = 48
SHOW = {"all": "all items", "wrong": "misclassified", "changed": "re-decided by the resolver"}
SPLITS = ("test", "train")
# pages and assets come from this server only: nothing is fetched from elsewhere (the page works offline)
CSP = ("default-src 'self'; img-src 'self' data:; media-src 'self'; style-src 'self' 'unsafe-inline'; "
       "script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


class NotFound(UserError):
    pass


class TooLarge(UserError):
    pass


class Unsupported(UserError):
    pass


STATUS = {NotFound: 404, TooLarge: 413, Unsupported: 415, BrokenRun: 422}


def create_app(runs_dir: str | Path = "runs", data_dir: str | None = None, include_bundled: bool = True) -> FastAPI:
    from fashionkit.data import CLASSES

    catalog = Catalog(runs_dir, include_bundled)
    lookups = Lookups(catalog, data_dir)
    # no /docs: FastAPI's Swagger page loads its scripts from a CDN, and this page must work offline
    app = FastAPI(title="fashionkit", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    app.state.catalog, app.state.lookups = catalog, lookups
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.globals.update(CLASSES=CLASSES, SHOW=SHOW)
    templates.env.filters["pct"] = lambda p: f"{100 * float(p):.1f}%"

    def page(request: Request, name: str, status: int = 200, **context) -> HTMLResponse:
        return templates.TemplateResponse(request, name, context, status_code=status)

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        # the server's own time for the request (browsers' dev tools and the benchmark read it)
        response.headers["Server-Timing"] = f"app;dur={1000 * (time.perf_counter() - start):.1f}"
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response

    # ---- errors: a card (HTML) or {"error": ...} (API), never a traceback -----------------------------------------

    def error_response(request: Request, status: int, message: str):
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": message}, status_code=status)
        return page(request, "error.html", status, message=message, status_code=status)

    @app.exception_handler(UserError)
    async def user_error(request: Request, e: UserError):
        return error_response(request, STATUS.get(type(e), 400), str(e))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        message = "no such page" if e.status_code == 404 else str(e.detail)
        return error_response(request, e.status_code, message)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x not in ("body", "query", "path"))
        return error_response(request, 422, f"{where or 'request'}: {first.get('msg', 'invalid')}")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception):
        traceback.print_exception(e, file=sys.stderr)
        return error_response(request, 500, f"unexpected error ({type(e).__name__}: {e}); the server log has details")

    # ---- choosing runs ------------------------------------------------------------------------------------------

    def run_or_404(run_id: str, kind: str | None = None) -> Run:
        run = catalog.get(run_id)
        if run is None:
            raise NotFound(f"no run {run_id!r} under {catalog.root} (or among the bundled models); see the runs page")
        if kind is not None and run.kind != kind:
            raise UserError(f"{run_id} is a {run.kind} run, not a {kind} run")
        return run

    def choose(classifier: str | None, metric: str | None, check: bool = True) -> tuple[Run | None, Run | None]:
        """The runs named, or else the newest classify run that loads and the metric run made from it (else the
        newest metric run with an index that loads). ``check``: try loading defaults (cached), so a broken run
        is passed over rather than chosen."""
        def usable(run: Run, load) -> bool:
            if not check:
                return True
            try:
                load(run)
                return True
            except BrokenRun:
                return False

        if classifier:
            clf = run_or_404(classifier, "classify")
        else:
            clf = next((r for r in catalog.of_kind("classify") if usable(r, lookups.classifier)), None)
        if metric == "none":
            return clf, None
        if metric:
            return clf, run_or_404(metric, "metric")
        metrics = [m for m in catalog.of_kind("metric") if m.extra.get("index")]
        if clf is not None:
            made_from = [m for m in metrics if _same_path(m.summary.get("from"), clf, m)
                         or _same_path((m.extra.get("resolve") or {}).get("classifier"), clf, m)
                         or (m.bundled and clf.bundled)]
            metrics = made_from + [m for m in metrics if m not in made_from]
        return clf, next((m for m in metrics if usable(m, lookups.embedding)), None)

    def need_classifier(clf: Run | None) -> Run:
        if clf is None:
            raise NotFound(f"no classify run under {catalog.root} and no bundled classifier; train one with "
                           f"`classify train` or start serve with --runs-dir pointing at your runs")
        return clf

    # ---- payloads (the API) -------------------------------------------------------------------------------------

    def runs_payload() -> dict:
        return {"runs_dir": str(catalog.root), "runs": [r.as_json() for r in catalog.ordered()]}

    def ambiguous_payload(classifier, metric, true, pred, show, page_no, per_page) -> dict:
        clf, met = choose(classifier, metric)
        clf = need_classifier(clf)
        true_c, pred_c = _class_param("true", true), _class_param("pred", pred)
        show = show or "all"
        if show not in SHOW:
            raise UserError(f"show must be one of {', '.join(SHOW)}, got {show!r}")
        page_no, per_page = _int_param("page", page_no, 1, 1, 10**6), _int_param("per_page", per_page, PER_PAGE, 1,
                                                                                  500)
        r = lookups.ranking(clf, met)
        changed = r.changed
        keep = r.order
        if true_c is not None:
            keep = keep[r.labels[keep] == true_c]
        if pred_c is not None:
            keep = keep[r.resolved[keep] == pred_c]
        if show == "wrong":
            keep = keep[r.resolved[keep] != r.labels[keep]]
        elif show == "changed":
            keep = keep[changed[keep]]
        pages = max(1, math.ceil(len(keep) / per_page))
        page_no = min(page_no, pages)
        items = []
        for rank, i in enumerate(keep[(page_no - 1) * per_page: page_no * per_page], (page_no - 1) * per_page + 1):
            i = int(i)
            items.append({
                "rank": rank, "index": i, "true": int(r.labels[i]), "true_name": CLASSES[r.labels[i]],
                "top1": int(r.top1[i]), "top1_name": CLASSES[r.top1[i]], "p1": float(r.probs[i, r.top1[i]]),
                "top2": int(r.top2[i]), "top2_name": CLASSES[r.top2[i]], "p2": float(r.probs[i, r.top2[i]]),
                "margin": float(r.margin[i]),
                "vote": CLASSES[r.votes[i]] if r.votes is not None and r.votes[i] >= 0 else None,
                "resolved": int(r.resolved[i]), "resolved_name": CLASSES[r.resolved[i]],
                "changed": bool(changed[i]), "correct": bool(r.resolved[i] == r.labels[i]),
                "image": f"/img/test/{i}.png"})
        resolver = lookups.resolver(clf, met) if met is not None else None
        return {
            "classifier": clf.id, "metric": met.id if met else None,
            "resolver": None if resolver is None else {"k": resolver.k, "threshold": resolver.threshold,
                                                       "source": resolver.source},
            "filters": {"true": true_c, "pred": pred_c, "show": show},
            "total": int(len(r.order)), "matching": int(len(keep)), "page": page_no, "pages": pages,
            "per_page": per_page, "ranking_seconds": round(r.seconds, 3),
            "accuracy": float((r.top1 == r.labels).mean()), "resolved_accuracy": float((r.resolved == r.labels).mean()),
            "changed": int(changed.sum()), "items": items}

    def item_payload(split: str, index: str, classifier, metric, k) -> dict:
        if split not in SPLITS:
            raise NotFound(f"no split {split!r}; items are test/<i> or train/<i>")
        images, labels = lookups.split(split)
        i = _int_param("item index", index, None, 0, len(labels) - 1)
        k = _int_param("k", k, DEFAULT_K, 1, 100)
        clf, met = choose(classifier, metric)
        result = lookups.look_up(images[i], clf, met, k, exclude_source=i if split == "train" else None)
        result["item"] = {"split": split, "index": i, "true": int(labels[i]), "true_name": CLASSES[labels[i]],
                          "image": f"/img/{split}/{i}.png"}
        if split == "test" and clf is not None:  # where it stands in the doubt ranking, for prev/next links
            r = lookups.ranking(clf, met)
            position = int(_position(r.order, i))
            result["doubt_rank"], result["ranked"] = position + 1, len(r.order)
            result["previous"] = int(r.order[position - 1]) if position > 0 else None
            result["next"] = int(r.order[position + 1]) if position + 1 < len(r.order) else None
        return result

    async def read_upload(file: UploadFile | None) -> tuple[bytes, dict]:
        """The uploaded bytes (kept in memory), checked: present, within the size limit, an image format Pillow
        reads, within the pixel limit."""
        from PIL import Image

        if file is None or not file.filename:
            raise UserError("no image uploaded: send one as the multipart field 'file'")
        data = await file.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            raise TooLarge(f"{file.filename} is larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MiB; scale it down")
        if not data:
            raise UserError(f"{file.filename} is empty")
        try:
            with Image.open(io.BytesIO(data)) as img:  # reads the header only
                fmt, size = img.format, img.size
        except Exception:
            raise Unsupported(f"{file.filename} is not an image (PNG, JPEG, GIF, BMP, TIFF or WebP)") from None
        if fmt not in UPLOAD_FORMATS:
            raise Unsupported(f"{file.filename} is a {fmt} image; upload PNG, JPEG, GIF, BMP, TIFF or WebP")
        if size[0] * size[1] > MAX_UPLOAD_PIXELS:
            raise TooLarge(f"{file.filename} has {size[0]}x{size[1]} pixels, more than {MAX_UPLOAD_PIXELS:,}; "
                           f"scale it down")
        return data, {"filename": file.filename, "format": fmt, "size": list(size), "bytes": len(data)}

    def upload_lookup(data: bytes, meta: dict, classifier, metric, k, with_images: bool) -> dict:
        """Runs in the thread pool (decoding and inference would otherwise hold up the event loop)."""
        k = _int_param("k", k, DEFAULT_K, 1, 100)
        clf, met = choose(classifier, metric)
        if clf is None and met is None:
            need_classifier(None)
        item = _item_from_bytes(data, meta["filename"])
        result = lookups.look_up(item, clf, met, k)
        result["upload"] = meta
        if with_images:
            result["item"] = {"split": "upload", "image": _png_data_uri(item.numpy()),
                              "original": _thumbnail_data_uri(data)}
        return result

    async def upload_payload(request: Request, file, classifier, metric, k, with_images: bool) -> dict:
        if request.headers.get("content-length", "").isdigit() and \
                int(request.headers["content-length"]) > MAX_UPLOAD_BYTES + 64 * 1024:
            raise TooLarge(f"the upload is larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MiB; scale it down")
        data, meta = await read_upload(file)
        return await run_in_threadpool(upload_lookup, data, meta, classifier, metric, k, with_images)

    def video_payload(group: str, name: str) -> dict:
        run = run_or_404(f"{group}/{name}", "video")
        if run.error:
            raise BrokenRun(f"{run.id} cannot be shown: {run.error}")
        frames, tracks, per_frame = _read_detections(run)
        s = run.summary
        return {"run": run.id, "summary": s, "status": run.status, "figures": [list(f) for f in run.figures],
                "items": s.get("items") or {}, "tracks": tracks, "frames": per_frame,
                "annotated": f"/runs/{run.id}/files/annotated.mp4" if "annotated.mp4" in run.files else None,
                "frame_count": frames, "fps": (s.get("video_fps") or 25) / max(1, int(s.get("stride") or 1)),
                "resolved_tracks": _resolved_tracks(s)}

    # ---- routes: runs -------------------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse)
    def runs_page(request: Request):
        return page(request, "runs.html", **runs_payload(), groups=_grouped(catalog.ordered()))

    @app.get("/api/runs")
    def api_runs():
        return runs_payload()

    @app.get("/runs/{group}/{name}", response_class=HTMLResponse)
    def run_page(request: Request, group: str, name: str):
        run = run_or_404(f"{group}/{name}")
        if run.kind == "video" and not run.error:
            return video_page(request, group, name)
        return page(request, "run.html", run=run, data=run.as_json())

    @app.get("/api/runs/{group}/{name}")
    def api_run(group: str, name: str):
        return run_or_404(f"{group}/{name}").as_json()

    @app.get("/runs/{group}/{name}/files/{rel:path}")
    def run_file(group: str, name: str, rel: str):
        run = run_or_404(f"{group}/{name}")
        path = run.files.get(rel)  # the allow-list: a request's path is looked up, never joined onto a directory
        if path is None or not path.is_file():
            raise NotFound(f"{run.id} has no file {rel!r} to show")
        media = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".mp4": "video/mp4",
                 ".csv": "text/csv", ".jsonl": "application/x-ndjson", ".json": "application/json"}
        return FileResponse(path, media_type=media.get(path.suffix.lower(), "application/octet-stream"))

    # ---- routes: ambiguous items and item pages -------------------------------------------------------------------

    @app.get("/ambiguous", response_class=HTMLResponse)
    def ambiguous_page(request: Request, classifier: str | None = None, metric: str | None = None,
                       true: str | None = None, pred: str | None = None, show: str | None = None,
                       per_page: str | None = None):
        data = ambiguous_payload(classifier, metric, true, pred, show, request.query_params.get("page"), per_page)
        return page(request, "ambiguous.html", data=data, classifiers=catalog.of_kind("classify"),
                    metrics=[m for m in catalog.of_kind("metric") if m.extra.get("index")],
                    query=_query(classifier=data["classifier"], metric=data["metric"] or "none"),
                    filters=_query(classifier=data["classifier"], metric=data["metric"] or "none",
                                   true=true, pred=pred, show=show, per_page=per_page))

    # the payloads hold plain Python values: JSONResponse skips FastAPI's slower generic encoder
    @app.get("/api/ambiguous")
    def api_ambiguous(request: Request, classifier: str | None = None, metric: str | None = None,
                      true: str | None = None, pred: str | None = None, show: str | None = None,
                      per_page: str | None = None):
        return JSONResponse(ambiguous_payload(classifier, metric, true, pred, show, request.query_params.get("page"),
                                              per_page))

    @app.get("/items/{split}/{index}", response_class=HTMLResponse)
    def item_page(request: Request, split: str, index: str, classifier: str | None = None,
                  metric: str | None = None, k: str | None = None):
        data = item_payload(split, index, classifier, metric, k)
        return page(request, "item.html", data=data,
                    query=_query(classifier=data["classifier"], metric=data["metric"] or "none", k=k))

    @app.get("/api/items/{split}/{index}")
    def api_item(split: str, index: str, classifier: str | None = None, metric: str | None = None,
                 k: str | None = None):
        return JSONResponse(item_payload(split, index, classifier, metric, k))

    @app.get("/img/{split}/{name}")
    def dataset_image(split: str, name: str):
        if split not in SPLITS or not name.endswith(".png"):
            raise NotFound("no such image; images are /img/test/<i>.png or /img/train/<i>.png")
        images, _ = lookups.split(split)
        i = _int_param("item index", name[:-4], None, 0, len(images) - 1)
        return Response(_png(images[i].numpy()), media_type="image/png",
                        headers={"Cache-Control": "public, max-age=86400"})

    # ---- routes: uploads ------------------------------------------------------------------------------------------

    @app.get("/upload", response_class=HTMLResponse)
    def upload_form(request: Request, classifier: str | None = None, metric: str | None = None):
        clf, met = choose(classifier, metric)
        return page(request, "upload.html", classifier=clf, metric=met, classifiers=catalog.of_kind("classify"),
                    metrics=[m for m in catalog.of_kind("metric") if m.extra.get("index")],
                    max_mib=MAX_UPLOAD_BYTES // (1024 * 1024))

    @app.post("/upload", response_class=HTMLResponse)
    async def upload_page(request: Request, file: UploadFile | None = None, classifier: str | None = None,
                          metric: str | None = None, k: str | None = None):
        form = await request.form()
        classifier, metric = classifier or form.get("classifier") or None, metric or form.get("metric") or None
        data = await upload_payload(request, file, classifier, metric, k or form.get("k"), with_images=True)
        return page(request, "item.html", data=data,
                    query=_query(classifier=data["classifier"], metric=data["metric"] or "none"))

    @app.post("/api/lookup")
    async def api_lookup(request: Request, file: UploadFile | None = None, classifier: str | None = None,
                         metric: str | None = None, k: str | None = None):
        return JSONResponse(await upload_payload(request, file, classifier, metric, k, with_images=False))

    # ---- routes: video results ------------------------------------------------------------------------------------

    def video_page(request: Request, group: str, name: str):
        data = video_payload(group, name)
        clf, met = choose(None, None, check=False)
        return page(request, "video.html", data=data, run=run_or_404(f"{group}/{name}"),
                    query=_query(classifier=clf.id if clf else None, metric=met.id if met else None))

    @app.get("/api/video/{group}/{name}")
    def api_video(group: str, name: str):
        return video_payload(group, name)

    @app.get("/video/{group}/{name}/frames/{frame}")
    def video_frame(group: str, name: str, frame: str):
        run = run_or_404(f"{group}/{name}", "video")
        path = run.files.get("annotated.mp4")
        if path is None:
            raise NotFound(f"{run.id} has no annotated.mp4 (it was made with --no-save-video)")
        n = _int_param("frame", frame.removesuffix(".jpg"), None, 0, 10**7)
        return Response(_frame_jpeg(path, n), media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/favicon.ico")
    def favicon():
        return RedirectResponse("/static/favicon.svg")

    return app


# ---- helpers ----------------------------------------------------------------------------------------------------

def _same_path(recorded: Any, run: Run, relative_to: Run) -> bool:
    import os

    if not recorded:
        return False
    path = Path(str(recorded))
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, relative_to.path.parent / path,
                                                    relative_to.path.parents[1] / path]
    return any(os.path.realpath(c) == str(run.path) for c in candidates)


def _class_param(name: str, value: str | None) -> int | None:
    from fashionkit.data import class_id

    if value in (None, "", "any"):
        return None
    try:
        return class_id(value)
    except UserError:
        raise UserError(f"{name}: {value!r} is not a Fashion-MNIST class (0-9 or a name such as coat)") from None


def _int_param(name: str, value: Any, default: int | None, low: int, high: int) -> int:
    if value in (None, ""):
        if default is None:
            raise UserError(f"{name} is required")
        return default
    try:
        n = int(str(value))
    except ValueError:
        raise UserError(f"{name} must be a whole number, got {value!r}") from None
    if not low <= n <= high:
        raise (NotFound if name in ("item index", "frame") else UserError)(
            f"{name} {n} is out of range ({low} to {high})")
    return n


def _query(**params) -> str:
    from urllib.parse import urlencode

    return urlencode({k: v for k, v in params.items() if v not in (None, "")})


def _position(order, i: int) -> int:
    import numpy as np

    return int(np.flatnonzero(order == i)[0])


def _png(pixels) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _png_data_uri(pixels) -> str:
    return "data:image/png;base64," + base64.b64encode(_png(pixels)).decode()


def _item_from_bytes(data: bytes, filename: str):
    """``read_item_image`` (the preprocessing of ``classify predict``) on uploaded bytes: Pillow reads them from a
    temporary file in the system's temp directory, never a run directory, deleted at once."""
    from fashionkit.data.images import read_item_image

    with tempfile.NamedTemporaryFile(prefix="fashionkit-upload-", suffix=Path(filename).suffix[:8]) as tmp:
        tmp.write(data)
        tmp.flush()
        try:
            return read_item_image(tmp.name)
        except UserError as e:
            raise UserError(str(e).replace(tmp.name, filename)) from None


def _thumbnail_data_uri(data: bytes) -> str | None:
    """The uploaded picture, at most 320 px on its longer side, for the item page (kept in the page only)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as img:
            img = ImageOps.exif_transpose(img)
            img.thumbnail((320, 320))
            buf = io.BytesIO()
            img.convert("RGBA").save(buf, format="PNG")
    except Exception:
        return None
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _frame_jpeg(path: Path, n: int) -> bytes:
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise BrokenRun(f"{path.name} cannot be opened (truncated or still being written?)")
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        if count and n >= count:
            raise NotFound(f"frame {n} is past the end of {path.name} ({count} frames)")
        cap.set(cv2.CAP_PROP_POS_FRAMES, n)
        ok, frame = cap.read()
    finally:
        cap.release()
    if not ok:
        raise NotFound(f"frame {n} of {path.name} cannot be decoded")
    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return buf.tobytes()


def _read_detections(run: Run) -> tuple[int, list[dict], list[dict]]:
    """``(frames, tracks, per-frame counts)`` from detections.jsonl: each track's class by majority of its frames,
    the classes it was given, its first and last frame and mean confidence. A half-written line ends the read."""
    path = run.files.get("detections.jsonl")
    if path is None:
        return 0, [], []
    classes: dict[Any, Counter] = defaultdict(Counter)
    first: dict[Any, tuple] = {}
    last: dict[Any, tuple] = {}
    confs: dict[Any, list] = defaultdict(list)
    per_frame = []
    frames = 0
    with path.open() as f:
        for position, line in enumerate(f):
            try:
                row = json.loads(line)
                dets = row["detections"]
            except (json.JSONDecodeError, KeyError, TypeError):
                break
            frames += 1
            per_frame.append({"position": position, "frame": row.get("frame"), "time": row.get("time"),
                              "count": len(dets)})
            for d in dets:
                track = d.get("track_id")
                if track is None:
                    continue
                classes[track][d.get("class_name", str(d.get("class_id")))] += 1
                first.setdefault(track, (position, row.get("frame"), row.get("time")))
                last[track] = (position, row.get("frame"), row.get("time"))
                confs[track].append(float(d.get("conf", 0)))
    tracks = []
    for track, counter in classes.items():
        name, n = counter.most_common(1)[0]
        tracks.append({"track_id": track, "class_name": name, "frames": sum(counter.values()),
                       "agreement": round(n / sum(counter.values()), 3), "classes": dict(counter.most_common()),
                       "first_position": first[track][0], "first_frame": first[track][1], "first_time": first[track][2],
                       "last_frame": last[track][1], "last_time": last[track][2],
                       "mean_conf": round(sum(confs[track]) / len(confs[track]), 3)})
    tracks.sort(key=lambda t: (t["first_position"], str(t["track_id"])))
    return frames, tracks, per_frame


def _resolved_tracks(summary: dict) -> list[dict]:
    """Track-level decisions a ``detect video --track`` summary carries (``tracks.items``: one
    ``{track_id, class_name, resolved, neighbours: [{class_name, distance, dataset_index}]}`` per track, see
    detect/tracks.py ``summary``; a plain list or a mapping of track id to such rows is read too), where present."""
    tracks = summary.get("tracks")
    if isinstance(tracks, dict) and isinstance(tracks.get("items"), list):
        tracks = tracks["items"]
    elif isinstance(tracks, dict):
        tracks = [{"track_id": k, **v} for k, v in tracks.items() if isinstance(v, dict)]
    if not isinstance(tracks, list):
        return []
    out = []
    for t in tracks:
        if not isinstance(t, dict):
            continue
        neighbours = [n for n in t.get("neighbours") or [] if isinstance(n, dict)]
        out.append({"track_id": t.get("track_id", t.get("id")), "class_name": t.get("class_name", t.get("class")),
                    "resolved": bool(t.get("resolved")) or bool(neighbours),
                    "neighbours": [{"class_name": n.get("class_name"), "distance": n.get("distance"),
                                    "dataset_index": n.get("dataset_index")} for n in neighbours]})
    return out


def _grouped(runs: list[Run]) -> list[tuple[str, list[Run]]]:
    titles = {"classify": "Classifiers", "metric": "Metric runs (embeddings, FAISS indexes, resolver)",
              "detect": "Detectors", "video": "Video results"}
    return [(titles[kind], [r for r in runs if r.kind == kind]) for kind in titles if any(r.kind == kind for r in runs)]
