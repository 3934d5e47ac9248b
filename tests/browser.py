"""Headless Chromium for tests, driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`).

Why this and not selenium or playwright: the protocol is JSON messages separated by NUL bytes on fds 3 and 4,
so the standard library is enough; there is no chromedriver whose version must match the browser, no
browser download, no port, and nothing new in requirements-dev.txt. Debian's `chromium` is the browser
(.ci/run installs it). The browser is a process of our own, stopped by its pid.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

# Recorded in the page before any of its own script runs (DevTools scripts are not subject to its CSP).
WATCH_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) =>
  window.__cspViolations.push(`${e.violatedDirective} blocked ${e.blockedURI || "inline"}`));
"""


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


class DevToolsError(RuntimeError):
    """The browser answered a command with an error, or not at all."""


class Chromium:
    """One headless browser: `call` sends a command and waits for its answer; events are kept in order."""

    def __init__(self, binary: str | None = None, timeout: float = 15.0) -> None:
        self.binary = binary or chromium_binary()
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="chromium-test-")
        self.proc: subprocess.Popen[bytes] | None = None
        self.events: list[dict[str, Any]] = []
        self._answers: dict[int, dict[str, Any]] = {}
        self._next_id = 0
        self._changed = threading.Condition()

    def start(self) -> Chromium:
        if not self.binary:
            raise DevToolsError("no chromium on PATH (apt-get install chromium)")
        to_browser, from_browser = os.pipe(), os.pipe()
        # The browser reads fd 3 and writes fd 4; bash puts our pipe ends there (fds 10 and up: clear of both).
        theirs = [fcntl.fcntl(to_browser[0], fcntl.F_DUPFD_CLOEXEC, 10)]
        theirs.append(fcntl.fcntl(from_browser[1], fcntl.F_DUPFD_CLOEXEC, 10))
        for fd in (to_browser[0], from_browser[1]):
            os.close(fd)
        args = [
            "--headless",
            "--no-sandbox",  # CI runs as root, where the sandbox refuses to start
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--no-first-run",
            "--no-default-browser-check",
            "--remote-debugging-pipe",
            f"--user-data-dir={self.profile}",
            "about:blank",
        ]
        redirect = f'exec "$0" "$@" 3<&{theirs[0]} 4>&{theirs[1]} {theirs[0]}<&- {theirs[1]}>&-'
        self.proc = subprocess.Popen(
            ["bash", "-c", redirect, self.binary, *args],
            pass_fds=theirs,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for fd in theirs:
            os.close(fd)
        self._write, self._read = to_browser[1], from_browser[0]
        self._reader = threading.Thread(target=self._receive, daemon=True)
        self._reader.start()
        self.call("Browser.getVersion")
        return self

    def _receive(self) -> None:
        pending = b""
        while chunk := os.read(self._read, 1 << 16):
            pending += chunk
            *messages, pending = pending.split(b"\0")
            with self._changed:
                for raw in messages:
                    message = json.loads(raw)
                    if "id" in message:
                        self._answers[message["id"]] = message
                    else:
                        self.events.append(message)
                self._changed.notify_all()

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        with self._changed:
            self._next_id += 1
            call_id = self._next_id
        message: dict[str, Any] = {"id": call_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        with self._changed:
            if not self._changed.wait_for(lambda: call_id in self._answers, timeout=self.timeout):
                raise DevToolsError(f"{method}: no answer within {self.timeout}s")
            answer = self._answers.pop(call_id)
        if "error" in answer:
            raise DevToolsError(f"{method}: {answer['error']}")
        return dict(answer.get("result", {}))

    def open(self, url: str, width: int = 1280, height: int = 900) -> Page:
        """A new tab at `url`, watched for console errors and CSP violations from its first script on."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        for domain in ("Page", "Runtime", "Log"):
            page.call(f"{domain}.enable")
        page.call("Page.addScriptToEvaluateOnNewDocument", {"source": WATCH_VIOLATIONS})
        page.resize(width, height)
        page.call("Page.navigate", {"url": url})
        return page

    def close(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc and hasattr(self, "_reader"):
            os.close(self._write)
            self._reader.join(timeout=10)  # the browser is gone, so its end of the pipe is closed
            os.close(self._read)
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        try:
            return self.start()
        except BaseException:
            self.close()  # a browser that started but never answered is still ours to stop
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()


class Page:
    def __init__(self, browser: Chromium, session: str) -> None:
        self.browser = browser
        self.session = session

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.browser.call(method, params, session=self.session)

    def resize(self, width: int, height: int) -> None:
        metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
        self.call("Emulation.setDeviceMetricsOverride", metrics)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaited when it is a promise)."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise DevToolsError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def errors(self) -> list[str]:
        """Everything the page reported as an error: uncaught exceptions, console.error, browser log errors
        (failed loads, CSP refusals), and CSP violations its own listener saw."""
        found = []
        for event in list(self.browser.events):
            if event.get("sessionId") != self.session:
                continue
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(f"exception: {params['exceptionDetails'].get('exception', {}).get('description')}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                args = [arg.get("value", arg.get("description")) for arg in params.get("args", [])]
                found.append(f"console.{params['type']}: {args}")
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                entry = params["entry"]
                found.append(f"log ({entry['source']}): {entry['text']} {entry.get('url', '')}".rstrip())
        violations = self.evaluate("window.__cspViolations || []")
        return found + [f"CSP violation: {violation}" for violation in violations]

    def screenshot(self, path: Path) -> None:
        """A PNG of the whole page, as tall as its content."""
        height = self.evaluate("Math.ceil(document.documentElement.scrollHeight)")
        width = self.evaluate("document.documentElement.clientWidth")
        self.resize(width, height)
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        path.write_bytes(base64.b64decode(data))
