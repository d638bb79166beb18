"""A real ``glide serve`` process, for the tests and ``benchmarks/serve_load.py``: started on
127.0.0.1 with a free port, stopped after, and called over HTTP as curl would.

The server runs in its own process (``python -m glide_diffusion.cli.main serve``), exactly as a
user starts it, so the caller sees its HTTP answers, its memory and its files. It imports this
same copy of glide_diffusion (the folder above the package goes first on its PYTHONPATH).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]  # the folder holding glide_diffusion/ (a checkout's root)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """``with ServeProcess(out_dir, *flags) as srv: srv.url``; the log is ``out_dir/../serve.log``."""

    def __init__(self, output: Path, *flags: str, start_timeout: float = 240.0):
        self.output, self.flags, self.start_timeout = Path(output), list(flags), start_timeout
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = self.output.parent / f"serve-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> ServeProcess:
        env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "glide_diffusion.cli.main",
                "serve",
                "--port",
                str(self.port),
                "-o",
                str(self.output),
                "--quiet",
                *self.flags,
            ],
            cwd=self.output.parent,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"glide serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if requests.get(self.url + "gradio_api/info", timeout=5).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.__exit__(None, None, None)
        raise TimeoutError(f"glide serve did not answer within {self.start_timeout} s:\n{self.log()}")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def rss_mb(self) -> float:
        """The server process's resident memory, MB (Linux /proc)."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    # --- the HTTP API, as curl would call it ---------------------------------------------

    def upload(self, data: bytes, name: str = "image.png") -> dict:
        """POST a file to /gradio_api/upload; the FileData that names it in a call."""
        r = requests.post(self.url + "gradio_api/upload", files={"files": (name, data)}, timeout=30)
        r.raise_for_status()
        (path,) = r.json()
        return {"path": path, "meta": {"_type": "gradio.FileData"}}

    def call(self, api: str, timeout: float = 300, **fields) -> tuple[str, object]:
        """POST /gradio_api/call/v2/<api> with named fields, then read the event stream:
        ("complete", data), ("error", message), or ("busy", detail) for a 503. The body is Python's JSON,
        which writes NaN and Infinity as JavaScript does (requests' json= refuses them)."""
        r = requests.post(
            self.url + f"gradio_api/call/v2/{api}",
            data=json.dumps(fields),
            timeout=30,
            headers={"Content-Type": "application/json"},
        )
        if r.status_code == 503:
            return "busy", r.json().get("detail")
        r.raise_for_status()
        event_id = r.json()["event_id"]
        stream = requests.get(self.url + f"gradio_api/call/v2/{api}/{event_id}", timeout=timeout)
        stream.raise_for_status()
        event, data = None, None
        for line in stream.text.splitlines():
            if line.startswith("event: "):
                event = line[len("event: ") :]
            elif line.startswith("data: ") and event in ("complete", "error"):
                data = json.loads(line[len("data: ") :])
                if event == "error" and isinstance(data, dict):
                    data = data.get("error")
                return event, data
        raise AssertionError(f"no result in the event stream: {stream.text[:500]}")

    def file(self, path: str) -> bytes:
        r = requests.get(self.url + f"gradio_api/file={path}", timeout=30)
        r.raise_for_status()
        return r.content
