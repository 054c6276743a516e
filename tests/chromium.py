"""Headless Chromium for UI tests, driven over the DevTools protocol: cookies, navigation, DOM reads, screenshots."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any


class Chromium:
    """One headless Chromium with one page; its profile and temp files live in one folder, removed on close."""

    def __init__(self, binary: str, width: int = 1400, height: int = 1000) -> None:
        from websockets.sync.client import connect

        # Profile and Chromium's own temp files (it also writes to $TMPDIR) in one folder, removed on close.
        self.base = tempfile.mkdtemp(prefix="patentml-chromium-")
        self.profile = os.path.join(self.base, "profile")
        self.width, self.height = width, height
        self.process = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--remote-debugging-address=127.0.0.1",
             "--remote-debugging-port=0", f"--user-data-dir={self.profile}", f"--window-size={width},{height}",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            env={**os.environ, "TMPDIR": self.base}, start_new_session=True,
        )
        active = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (active.exists() and active.read_text().count("\n") >= 1):
            assert self.process.poll() is None and time.monotonic() < deadline, "chromium did not start"
            time.sleep(0.1)
        port = int(active.read_text().splitlines()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            (page,) = [t for t in json.load(response) if t["type"] == "page"]
        self._stack = contextlib.ExitStack()
        self.ws = self._stack.enter_context(connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=10))
        self._id = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == self._id:
                assert "error" not in message, message
                return message.get("result", {})

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 60, what: str = "") -> Any:
        """Evaluate ``expression`` until it is truthy; fail with the page's text."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.3)
        text = self.evaluate("document.body ? document.body.innerText.slice(0, 2000) : ''")
        raise AssertionError(f"timed out waiting for {what or expression}; the page says:\n{text}")

    def open(self, url: str, ready: str = "document.readyState === 'complete'") -> None:
        self.call("Page.navigate", url=url)
        time.sleep(0.2)  # the old document may still answer readyState for a moment
        self.wait_for(ready, what=f"{url} to load")

    def dark(self, on: bool) -> None:
        """Emulate the system's dark (or light) colour scheme."""
        value = "dark" if on else "light"
        self.call("Emulation.setEmulatedMedia", features=[{"name": "prefers-color-scheme", "value": value}])

    def screenshot(self, selector: str | None = None, full: bool = False) -> bytes:
        """A PNG of the viewport, of the whole page (``full``) or of one element (``selector``)."""
        params: dict[str, Any] = {"format": "png"}
        if selector or full:
            box = self.evaluate(
                f"(() => {{ const e = {json.dumps(selector)} ? document.querySelector({json.dumps(selector)})"
                " : document.documentElement; if (!e) return null; const r = e.getBoundingClientRect();"
                " return {x: r.left + scrollX, y: r.top + scrollY, w: Math.max(r.width, e.scrollWidth),"
                " h: Math.max(r.height, e.scrollHeight)}; })()")
            assert box, f"no element {selector}"
            pad = 0 if full else 8
            params.update(captureBeyondViewport=True, clip={
                "x": max(0, box["x"] - pad), "y": max(0, box["y"] - pad), "width": box["w"] + 2 * pad,
                "height": box["h"] + 2 * pad, "scale": 1})
        return base64.b64decode(self.call("Page.captureScreenshot", **params)["data"])

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._stack.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # renderer/zygote children still writing
        for _ in range(10):
            shutil.rmtree(self.base, ignore_errors=True)
            if not os.path.exists(self.base):
                break
            time.sleep(0.2)
