"""Headless Chromium (Debian's ``chromium`` package) driven over the Chrome DevTools Protocol,
with nothing but the ``websockets`` library: start it, open a page, click, type, evaluate,
take screenshots, and record every console error and every response the page loads."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import websockets

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--mute-audio",
    "--remote-debugging-port=0",
)


def require_chromium() -> Path:
    """The browser, or a skip when it is missing; under CI=true a missing browser fails."""
    if CHROMIUM.exists():
        return CHROMIUM
    message = f"{CHROMIUM} is missing (apt-get install -y chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(message + "; CI must run the browser tests")
    pytest.skip(message)


@dataclass(slots=True)
class Response:
    url: str
    status: int
    type: str  # Document, Script, Stylesheet, Image, Fetch, WebSocket, ...
    headers: dict[str, str]
    size: int = 0  # bytes on the wire (encodedDataLength), once loaded


@dataclass(slots=True)
class PageLog:
    """What the page said and loaded."""

    errors: list[str] = field(default_factory=list)
    responses: dict[str, Response] = field(default_factory=dict)  # by request id


class CdpError(RuntimeError):
    pass


class Browser:
    """One Chromium process and one page in it, attached over a flat CDP session."""

    def __init__(self, proc: asyncio.subprocess.Process, ws: Any, profile: Path) -> None:
        self._proc = proc
        self._ws = ws
        self._profile = profile
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._waiters: list[tuple[str, asyncio.Future[dict[str, Any]]]] = []
        self._session: str | None = None
        self.log = PageLog()
        self._reader = asyncio.create_task(self._read(), name="test:cdp-reader")

    async def _read(self) -> None:
        async for raw in self._ws:
            msg = json.loads(raw)
            if "id" in msg:
                fut = self._pending.pop(msg["id"], None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
                continue
            self._event(msg["method"], msg.get("params", {}))

    def _event(self, method: str, params: dict[str, Any]) -> None:
        log = self.log
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = [a.get("value", a.get("description", "")) for a in params.get("args", [])]
            log.errors.append(f"console.{params['type']}: {args}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text")
            log.errors.append(f"exception: {text}")
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            entry = params["entry"]
            log.errors.append(
                f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}"
            )
        elif method == "Network.responseReceived":
            r = params["response"]
            log.responses[params["requestId"]] = Response(
                r["url"],
                r["status"],
                params.get("type", ""),
                {k.lower(): v for k, v in r.get("headers", {}).items()},
            )
        elif method == "Network.loadingFinished":
            known = log.responses.get(params["requestId"])
            if known is not None:
                known.size = int(params.get("encodedDataLength", 0))
        for name, fut in list(self._waiters):
            if name == method and not fut.done():
                fut.set_result(params)
                self._waiters.remove((name, fut))

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        msg_id = next(self._ids)
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if self._session is not None and not method.startswith("Target."):
            msg["sessionId"] = self._session
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = fut
        await self._ws.send(json.dumps(msg))
        async with asyncio.timeout(30):
            reply = await fut
        if "error" in reply:
            raise CdpError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply["result"]
        return result

    def expect(self, method: str) -> asyncio.Future[dict[str, Any]]:
        """A future for the next ``method`` event (register it before causing the event)."""
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.append((method, fut))
        return fut

    async def open_page(self) -> None:
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        self._session = attached["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            await self.send(f"{domain}.enable")

    async def goto(self, url: str) -> None:
        loaded = self.expect("Page.loadEventFired")
        await self.send("Page.navigate", {"url": url})
        async with asyncio.timeout(20):
            await loaded

    async def eval(self, expression: str) -> Any:
        """The value of a JavaScript expression (awaited when it is a promise)."""
        out = await self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in out:
            raise CdpError(f"{expression[:80]}: {out['exceptionDetails']}")
        return out["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 20, what: str = "") -> Any:
        """Until ``expression`` is truthy; its value (true for an element)."""
        probe = f"(() => {{ const v = ({expression}); return v instanceof Node ? true : v; }})()"
        try:
            async with asyncio.timeout(timeout):
                while True:
                    value = await self.eval(probe)
                    if value:
                        return value
                    await asyncio.sleep(0.1)
        except TimeoutError:
            text = await self.eval("document.getElementById('main')?.innerText?.slice(0, 800)")
            raise AssertionError(
                f"waited {timeout} s for {what or expression}; errors {self.log.errors}; "
                f"the page shows: {text!r}"
            ) from None

    async def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element (it must be visible and on top)."""
        await self.release(await self.press(selector))

    async def press(self, selector: str) -> dict[str, Any]:
        """Press the left button in the middle of the element; ``release`` ends the click."""
        box: dict[str, Any] | None = await self.eval(
            f"""(() => {{
                const el = document.querySelector({json.dumps(selector)});
                if (!el) return null;
                el.scrollIntoView({{block: 'center', inline: 'center'}});
                const r = el.getBoundingClientRect();
                const x = r.left + r.width / 2, y = r.top + r.height / 2;
                const top = document.elementFromPoint(x, y);
                return {{x, y, onTop: top === el || el.contains(top)}};
            }})()"""
        )
        assert box is not None, f"no element {selector}"
        assert box["onTop"], f"{selector} is covered by another element"
        await self._mouse("mousePressed", box)
        return box

    async def release(self, box: dict[str, Any]) -> None:
        await self._mouse("mouseReleased", box)

    async def _mouse(self, kind: str, box: dict[str, Any]) -> None:
        await self.send(
            "Input.dispatchMouseEvent",
            {"type": kind, "x": box["x"], "y": box["y"], "button": "left", "clickCount": 1},
        )

    async def type(self, selector: str, text: str) -> None:
        await self.eval(f"document.querySelector({json.dumps(selector)}).focus()")
        await self.eval(f"document.querySelector({json.dumps(selector)}).select?.()")
        await self.send("Input.insertText", {"text": text})

    async def choose(self, selector: str, value: str) -> None:
        """Pick an option of a <select>, as a user's choice does (a change event)."""
        await self.eval(
            f"""(() => {{ const el = document.querySelector({json.dumps(selector)});
            el.value = {json.dumps(value)};
            el.dispatchEvent(new Event('change', {{bubbles: true}})); }})()"""
        )

    async def screenshot(self, path: Path, *, full_page: bool = True) -> None:
        params: dict[str, Any] = {"format": "png", "captureBeyondViewport": full_page}
        data = await self.send("Page.captureScreenshot", params)
        await asyncio.to_thread(_write, path, base64.b64decode(data["data"]))

    async def viewport(self, width: int, height: int, *, mobile: bool) -> None:
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            {
                "width": width,
                "height": height,
                "deviceScaleFactor": 2 if mobile else 1,
                "mobile": mobile,
            },
        )

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.send("Browser.close")
        with contextlib.suppress(Exception):
            await self._ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader
        if self._proc.returncode is None:
            try:
                await asyncio.wait_for(self._proc.wait(), 10)
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()
        shutil.rmtree(self._profile, ignore_errors=True)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _devtools(port_file: Path) -> tuple[str, str] | None:
    """The DevTools port and browser path, once Chromium has written both."""
    try:
        words = port_file.read_text().split()
    except FileNotFoundError:
        return None
    return (words[0], words[1]) if len(words) >= 2 else None


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:]


@contextlib.asynccontextmanager
async def chromium(profile: Path, stderr_log: Path) -> AsyncIterator[Browser]:
    """Start the browser with a throwaway profile; its DevTools port is read from the file
    Chromium writes there (port 0 picks a free one)."""
    binary = require_chromium()
    await asyncio.to_thread(profile.mkdir, parents=True, exist_ok=True)
    with stderr_log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            str(binary),
            *FLAGS,
            f"--user-data-dir={profile}",
            "about:blank",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=err,
        )
    port_file = profile / "DevToolsActivePort"
    try:
        async with asyncio.timeout(30):
            while (found := _devtools(port_file)) is None:
                if proc.returncode is not None:
                    raise AssertionError(f"chromium exited: {_tail(stderr_log)}")
                await asyncio.sleep(0.05)
        port, path = found
        ws = await websockets.connect(f"ws://127.0.0.1:{port}{path}", max_size=64 * 2**20)
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    browser = Browser(proc, ws, profile)
    try:
        await browser.open_page()
        yield browser
    finally:
        await browser.close()
