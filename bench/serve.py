"""`vqgen serve` on the demo run: how soon it answers, and the README's screenshot of the page.

    .venv/bin/python -m bench.serve                                # -> bench/results/serve.json
    .venv/bin/python -m bench.serve --screenshot docs/serve.png    # `make docs`

Timing (issue 18's target: the first generation of 16 demo images in <= 2 s on the CPU after
start-up). Each repeat starts a fresh `vqgen serve --run runs/demo` process, as a user does, and waits
until it answers (gradio_client connects); then one request for 16 images at the page's starting
values (every class in turn, guidance 1.5) goes through gradio_client, the page's own API, and the
clock stops when the grid's PNG is on disk here. Median of the repeats, the start-up time beside it.

The screenshot: Debian's headless chromium opens the page (which draws a first grid as it opens),
waits until the grid's <img> holds a picture, and saves the window as PNG. `headless_page` drives
the browser over the DevTools protocol; tests/vqgen/test_serve.py uses it for its browser test.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

RESULT = Path(__file__).parent / "results" / "serve.json"
# `make demo`'s run, else the one bench/demo.py trains (`make bench` runs it just before this one).
DEMO_RUNS = tuple(Path(__file__).parents[1] / "runs" / name for name in ("demo", "bench-demo"))
COUNT = 16
WINDOW = (1280, 900)
# The grid's picture once loaded: its natural size, or null while the element holds none.
GRID_IMAGE_JS = ("(() => { const img = document.querySelector('#samples img'); "
                 "return img && img.complete && img.naturalWidth > 0 ? [img.naturalWidth, img.naturalHeight] : null; })()")


class Page:
    """One browser tab over the DevTools protocol (a websocket to chromium's browser endpoint)."""

    def __init__(self, ws: Any):
        self.ws, self.last_id, self.session = ws, 0, None

    def send(self, method: str, params: dict | None = None) -> dict:
        """Send a command (to the tab once attached) and return its result, skipping events."""
        self.last_id += 1
        message = {"id": self.last_id, "method": method, "params": params or {}}
        if self.session:
            message["sessionId"] = self.session
        self.ws.send(json.dumps(message))
        while True:
            reply = json.loads(self.ws.recv(timeout=60))
            if reply.get("id") == self.last_id:
                if "error" in reply:
                    raise RuntimeError(f"chromium: {method}: {reply['error']}")
                return reply["result"]

    def open(self, url: str, size: tuple[int, int]) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": size[0], "height": size[1], "deviceScaleFactor": 1, "mobile": False})
        self.send("Page.navigate", {"url": url})

    def evaluate(self, expression: str) -> Any:
        return self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})["result"].get("value")

    def wait_for(self, expression: str, timeout: float) -> Any:
        """Poll `expression` until it is truthy; its value, or TimeoutError."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if value := self.evaluate(expression):
                return value
            time.sleep(0.2)
        raise TimeoutError(f"chromium: after {timeout:.0f} s the page still has no {expression[:60]}...")

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path


@contextlib.contextmanager
def headless_page(url: str, size: tuple[int, int] = WINDOW, chromium: str = "chromium") -> Iterator[Page]:
    """A headless chromium tab showing `url`, closed on exit."""
    from websockets.sync.client import connect

    # Chromium's helper processes may still touch the profile as it is removed: a leftover file in /tmp
    # must not fail the caller.
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        # --no-sandbox: chromium refuses to start as root otherwise (CI and these machines run as root).
        # Its own session, so that the renderer and other helpers stop with it (they write to the profile).
        browser = subprocess.Popen([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                    "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            with connect(_devtools_url(Path(profile), browser), max_size=None) as ws:
                page = Page(ws)
                page.open(url, size)
                yield page
        finally:
            os.killpg(browser.pid, signal.SIGTERM)
            browser.wait(30)


def _devtools_url(profile: Path, browser: subprocess.Popen, timeout: float = 60) -> str:
    """The browser's DevTools websocket, from the DevTools port file chromium writes in its profile."""
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and browser.poll() is None:
        lines = port_file.read_text().split() if port_file.is_file() else []
        if len(lines) == 2:
            return f"ws://127.0.0.1:{lines[0]}{lines[1]}"
        time.sleep(0.1)
    raise RuntimeError(f"chromium did not start (exit code {browser.poll()}); is Debian's chromium installed?")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(run: Path, port: int, timeout: float = 300) -> Iterator[tuple[Any, float]]:
    """A fresh `vqgen serve --run RUN` process: (a gradio_client Client connected to it, seconds to start)."""
    from gradio_client import Client

    # On the CPU (the target's), offline, as the tests run.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    with tempfile.TemporaryFile() as log:
        start = time.perf_counter()
        where = os.path.relpath(run) if run.resolve().is_relative_to(Path.cwd()) else str(run)  # as a user types it
        proc = subprocess.Popen([sys.executable, "-m", "vqgen", "serve", "--run", where, "--port", str(port)],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            client = _connect(Client, f"http://127.0.0.1:{port}/", proc, log, timeout)
            yield client, time.perf_counter() - start
        finally:
            proc.terminate()
            proc.wait(60)


def _connect(client_class: type, url: str, proc: subprocess.Popen, log: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"vqgen serve exited ({proc.returncode}): {log.read().decode()[-2000:]}")
        try:
            return client_class(url, verbose=False)
        except Exception:  # not listening yet (httpx's connection errors and gradio_client's own)
            time.sleep(0.5)
    raise TimeoutError(f"vqgen serve did not answer at {url} within {timeout:.0f} s")


def generate_request(count: int = COUNT, seed: int = 0) -> tuple:
    """The /generate request at the page's starting values (every class in turn, guidance 1.5)."""
    from vqgen.serve import EVERY_CLASS

    return (EVERY_CLASS, count, 1.5, "constant", 1.0, 0, 1.0, seed)


def time_first_generation(run: Path, repeats: int) -> dict:
    firsts, startups = [], []
    for r in range(repeats):
        request = generate_request(seed=r)  # before the clock: it imports vqgen (torch) here the first time
        with server(run, free_port()) as (client, startup):
            start = time.perf_counter()
            client.predict(*request, api_name="/generate")
            firsts.append(time.perf_counter() - start)
            startups.append(startup)
    median = statistics.median(firsts)
    return {"first_generation_s": round(median, 3), "first_generation_all_s": [round(t, 3) for t in firsts],
            "startup_s": round(statistics.median(startups), 1), "target_s": 2.0, "target_met": median <= 2.0}


def screenshot(run: Path, path: Path) -> Path:
    """The page after its first grid, as PNG at `path` (the README's picture of the demo)."""
    port = free_port()
    with server(run, port), headless_page(f"http://127.0.0.1:{port}/") as page:
        page.wait_for(GRID_IMAGE_JS, timeout=120)
        time.sleep(0.5)  # the image fades in
        return page.screenshot(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="the generator to serve (default: runs/demo, else runs/bench-demo)")
    parser.add_argument("--repeats", type=int, default=5, help="fresh servers timed")
    parser.add_argument("--screenshot", type=Path, metavar="PNG", help="save a screenshot of the page instead")
    args = parser.parse_args()
    args.run = args.run or next((run for run in DEMO_RUNS if (run / "stages" / "prior.json").is_file()), None)
    if args.run is None:
        sys.exit("bench.serve: no finished demo run (runs/demo or runs/bench-demo); run `make demo` first")
    if args.screenshot:
        if shutil.which("chromium") is None:
            sys.exit("bench.serve: no chromium; apt-get install chromium (or `make chromium`)")
        print(f"screenshot: {screenshot(args.run, args.screenshot)}")
        return
    import gradio
    import torch

    from core.runs import write_json

    record = {
        "benchmark": "serve",
        "setup": {"run": str(args.run), "count": COUNT, "repeats": args.repeats, "device": "cpu",
                  "cpus": os.cpu_count(), "torch": torch.__version__, "gradio": gradio.__version__,
                  "machine": platform.machine()},
        **time_first_generation(args.run, args.repeats),
    }
    write_json(RESULT, record)
    print(json.dumps(record, sort_keys=True))


if __name__ == "__main__":
    main()
