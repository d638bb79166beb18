"""glide serve under load, as a user and a program see it: a real server process on 127.0.0.1.

1. Page latency: headless Chromium (Debian's) opens the page, types a caption and clicks Generate
   (one image, default settings); seconds from the click to the image on the page, for the first
   click after start and for later ones.
2. API throughput: N requests at once over plain HTTP (default settings, one image each) with a
   queue that holds them all: images per second, latency percentiles; then N at once with the
   default queue: how many got a result and how many a "busy" answer. The server's memory before
   and after.

    python benchmarks/serve_load.py                     # the bundled Shapes models, 50 requests
    python benchmarks/serve_load.py --requests 20 --clicks 3 --no-browser
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from glide_diffusion.serve.process import ServeProcess


def page_latency(url: str, clicks: int) -> list[float]:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("no chromium on PATH (apt-get install chromium)")
    times = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(300_000)
        page.goto(url)
        page.wait_for_selector("#t2i-prompt textarea")
        page.click("#t2i-settings")  # the seed field
        for k in range(clicks):
            page.fill(
                "#t2i-prompt textarea",
                [
                    "a large red circle on a white background",
                    "a small blue star",
                    "a green square in the top left corner",
                ][k % 3],
            )
            page.fill("#t2i-seed input", str(k))
            before = page.get_attribute("#t2i-gallery img", "src") if page.locator("#t2i-gallery img").count() else ""
            start = time.monotonic()
            page.click("#t2i-generate")
            page.wait_for_function(
                "(before) => { const im = document.querySelector('#t2i-gallery img'); "
                "return im !== null && im.src !== before && im.complete && im.naturalWidth > 0; }",
                arg=before,
                timeout=300_000,
            )
            times.append(time.monotonic() - start)
        browser.close()
    return times


def burst(srv: ServeProcess, n: int) -> tuple[list[tuple[str, float]], float]:
    def one(i: int) -> tuple[str, float]:
        start = time.monotonic()
        event, data = srv.call("text2im", prompt="a red circle", seed=i, timeout=1800)
        kind = "done" if event == "complete" else "busy" if str(data).startswith("busy") else f"error: {data}"
        return kind, time.monotonic() - start

    start = time.monotonic()
    with cf.ThreadPoolExecutor(n) as pool:
        answers = list(pool.map(one, range(n)))
    return answers, time.monotonic() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=50)
    p.add_argument("--clicks", type=int, default=3)
    p.add_argument("--no-browser", action="store_true")
    p.add_argument("--dir", default=None, help="folder for the servers' output and logs (default: a temporary one)")
    p.add_argument("serve_flags", nargs="*", help="more glide serve flags (after --)")
    args = p.parse_args()
    print(f"load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.dir or tmp) / "out"
        if not args.no_browser:
            with ServeProcess(out, *args.serve_flags) as srv:
                times = page_latency(srv.url, args.clicks)
                print(
                    f"page: image shown {', '.join(f'{t:.2f}' for t in times)} s after the click "
                    "(first click after start first)"
                )
        with ServeProcess(out, "--queue-size", str(args.requests), *args.serve_flags) as srv:
            srv.call("text2im", prompt="a red circle")  # warm
            before = srv.rss_mb()
            answers, seconds = burst(srv, args.requests)
            done = sorted(t for k, t in answers if k == "done")
            others = [k for k, _ in answers if k != "done"]
            print(
                f"API, queue {args.requests}: {len(done)} of {args.requests} images in {seconds:.1f} s = "
                f"{len(done) / seconds:.2f} images/s; latency p50 {statistics.median(done):.1f} s, "
                f"max {done[-1]:.1f} s; not done: {others[:3]}"
            )
            print(f"server memory: {before:.0f} MB before, {srv.rss_mb():.0f} MB after")
        with ServeProcess(out, *args.serve_flags) as srv:
            answers, seconds = burst(srv, args.requests)
            kinds = [k for k, _ in answers]
            print(
                f"API, default queue: {kinds.count('done')} results, {kinds.count('busy')} busy, "
                f"{len(kinds) - kinds.count('done') - kinds.count('busy')} other, in {seconds:.1f} s; "
                f"healthy after: {srv.call('text2im', prompt='a red circle')[0] == 'complete'}"
            )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
