"""Open a page in real headless Chromium and report console errors and broken images.

Talks the DevTools protocol over ``--remote-debugging-pipe`` (file descriptors 3 and 4,
messages separated by NUL bytes), so it needs nothing but the standard library and Debian's
``chromium``.  Used by ``test_stk_batch_browser.py``; runnable by hand::

    python test/browser_check.py campaign/index.html [screenshot.png]
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


def find_chromium():
    """The Chromium executable, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageReport:
    errors: list = field(default_factory=list)      # console errors, exceptions, failed loads
    messages: list = field(default_factory=list)    # every console message (level, text)
    images: list = field(default_factory=list)      # (src, naturalWidth, naturalHeight)
    title: str = ""
    screenshot: bytes = b""


class _Pipe:
    def __init__(self, proc, wfd, rfd):
        self.proc, self.wfd, self.rfd = proc, wfd, rfd
        self.buf = b""
        self.next_id = 0
        self.events = []

    def send(self, method, params=None, session=None):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.wfd, json.dumps(msg).encode() + b"\0")
        return self.next_id

    def _read_one(self, deadline):
        while b"\0" not in self.buf:
            if time.monotonic() > deadline:
                raise TimeoutError("no answer from Chromium")
            chunk = os.read(self.rfd, 1 << 16)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self.buf += chunk
        raw, self.buf = self.buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method, params=None, session=None, timeout=30.0):
        mid = self.send(method, params, session)
        deadline = time.monotonic() + timeout
        while True:
            msg = self._read_one(deadline)
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_event(self, name, timeout=30.0):
        deadline = time.monotonic() + timeout
        for i, ev in enumerate(self.events):
            if ev.get("method") == name:
                return self.events.pop(i)
        while True:
            msg = self._read_one(deadline)
            if msg.get("method") == name:
                return msg
            self.events.append(msg)


def check_page(path, *, chromium=None, timeout=60.0, screenshot=False) -> PageReport:
    """Load ``path`` (a local HTML file) and collect what a person would see go wrong."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("no chromium executable on PATH")
    url = Path(path).resolve().as_uri()
    report = PageReport()
    with tempfile.TemporaryDirectory(prefix="stk_chromium_") as profile:
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()
        # the browser reads commands on fd 3 and writes answers on fd 4: the child moves the
        # pipe ends there (copies first, so that neither end is overwritten by the other; a
        # shell redirection would fail on fd numbers > 9, as under pytest's capture)
        def _onto_3_and_4():
            r, w = os.dup(to_browser_r), os.dup(from_browser_w)
            os.dup2(r, 3)
            os.dup2(w, 4)

        proc = subprocess.Popen(
            [chromium, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe",
             "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(3, 4), preexec_fn=_onto_3_and_4)  # noqa: PLW1509 - no threads here
        os.close(to_browser_r)
        os.close(from_browser_w)
        pipe = _Pipe(proc, to_browser_w, from_browser_r)
        try:
            target = pipe.call("Target.createTarget", {"url": "about:blank"}, timeout=timeout)
            sess = pipe.call("Target.attachToTarget", {"targetId": target["targetId"],
                                                       "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                pipe.call(f"{domain}.enable", session=sess)
            pipe.call("Page.navigate", {"url": url}, session=sess)
            pipe.wait_event("Page.loadEventFired", timeout=timeout)
            info = pipe.call("Runtime.evaluate", {
                "expression": ("JSON.stringify({title: document.title, images: Array.from("
                               "document.images).map(i => [i.getAttribute('src'), "
                               "i.naturalWidth, i.naturalHeight])})"),
                "returnByValue": True}, session=sess)
            data = json.loads(info["result"]["value"])
            report.title = data["title"]
            report.images = [tuple(x) for x in data["images"]]
            if screenshot:
                shot = pipe.call("Page.captureScreenshot", {"format": "png",
                                                            "captureBeyondViewport": True},
                                 session=sess)
                report.screenshot = base64.b64decode(shot["data"])
            # let late messages arrive, then read what is buffered
            time.sleep(0.3)
            pipe.call("Runtime.evaluate", {"expression": "1"}, session=sess)
            for ev in pipe.events:
                method, params = ev.get("method"), ev.get("params", {})
                if method == "Runtime.consoleAPICalled":
                    text = " ".join(str(a.get("value", a.get("description", "")))
                                    for a in params.get("args", []))
                    report.messages.append((params.get("type"), text))
                    if params.get("type") in ("error", "assert"):
                        report.errors.append(f"console.{params['type']}: {text}")
                elif method == "Runtime.exceptionThrown":
                    report.errors.append(f"exception: {params['exceptionDetails'].get('text')}")
                elif method == "Log.entryAdded":
                    entry = params.get("entry", {})
                    report.messages.append((entry.get("level"), entry.get("text")))
                    if entry.get("level") == "error":
                        report.errors.append(f"log: {entry.get('text')} {entry.get('url', '')}")
                elif method == "Network.loadingFailed":
                    report.errors.append(f"load failed: {params.get('errorText')}")
            with_suppress_close(pipe)
        finally:
            os.close(to_browser_w)
            os.close(from_browser_r)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return report


def with_suppress_close(pipe):
    try:
        pipe.send("Browser.close")
    except OSError:
        pass


if __name__ == "__main__":
    rep = check_page(sys.argv[1], screenshot=len(sys.argv) > 2)
    if len(sys.argv) > 2:
        Path(sys.argv[2]).write_bytes(rep.screenshot)
    print(json.dumps({"title": rep.title, "images": rep.images, "errors": rep.errors,
                      "messages": rep.messages}, indent=1))
    sys.exit(1 if rep.errors else 0)
