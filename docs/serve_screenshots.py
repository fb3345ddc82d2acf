"""Screenshots of ``fashionkit serve`` for the README, taken by Debian's headless Chromium through Selenium.

    .venv/bin/python docs/serve_screenshots.py --runs-dir runs [--classifier classify/x --metric metric/y]

Starts the real command on a free port of 127.0.0.1, opens the ambiguous-items page, picks the most doubtful item
whose resolver decision differs from the classifier (else the most doubtful one), and saves
``docs/serve-item.png`` (its item page) and ``docs/serve-ambiguous.png``, each as a palette PNG under 300 KB.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent


def shrink(path: Path) -> None:
    from PIL import Image

    with Image.open(path) as img:
        img.convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs-dir", required=True)
    p.add_argument("--classifier", default=None)
    p.add_argument("--metric", default=None)
    p.add_argument("--out", default=str(HERE))
    args = p.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "fashionkit", "serve", "--runs-dir", args.runs_dir,
                               "--port", str(port), "--no-bundled"])
    try:
        for _ in range(600):
            try:
                httpx.get(url + "/api/runs", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        params = {k: v for k, v in (("classifier", args.classifier), ("metric", args.metric)) if v}
        ranked = httpx.get(url + "/api/ambiguous", params={**params, "per_page": 200}, timeout=3600).json()
        changed = [it for it in ranked["items"] if it["changed"] and it["correct"]]
        item = (changed or ranked["items"])[0]["index"]

        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium")
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000",
                    "--force-device-scale-factor=1", "--hide-scrollbars"):
            options.add_argument(arg)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        try:
            query = "&".join(f"{k}={v}" for k, v in params.items())
            for name, page in (("serve-item.png", f"/items/test/{item}?{query}"),
                               ("serve-ambiguous.png", f"/ambiguous?{query}")):
                driver.get(url + page)
                time.sleep(1.0)
                out = Path(args.out) / name
                driver.save_screenshot(str(out))
                shrink(out)
                print(f"{out}: {out.stat().st_size // 1024} KB")
        finally:
            driver.quit()
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
