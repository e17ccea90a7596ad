"""The dashboard's files as the daemon serves them (headers, caching, auth), the live feed's
token for browsers, what the files may contain, and that a built package ships them."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from hlcopy.api import dashboard
from hlcopy.api.feed import FEED_PROTOCOL
from hlcopy.api.server import ApiServer
from hlcopy.credentials import Secret
from hlcopy.daemon import Daemon
from hlcopy.events import EventBus
from hlcopy.notify import Notifier

from tests.conftest import REPO, make_config, running

TOKEN = "dash-token-0123456789abcdef"
STATIC = REPO / "hlcopy" / "api" / "static"
MAX_PAGE_BYTES = 300 * 1024


@dataclass
class Api:
    url: str
    session: aiohttp.ClientSession


@contextlib.asynccontextmanager
async def api_daemon(tmp_path: Path, *, read_auth: bool) -> AsyncIterator[Api]:
    cfg = make_config(tmp_path, api={"port": 0, "read_auth": read_auth})
    daemon = Daemon(cfg, notifier=Notifier(""))
    server = ApiServer(daemon, cfg.api, Secret(TOKEN), bus=EventBus())
    daemon.add(server)
    async with running(daemon), aiohttp.ClientSession() as session:
        yield Api(f"http://127.0.0.1:{server.port}", session)


@pytest.mark.parametrize("read_auth", [False, True], ids=["open-reads", "read-auth"])
async def test_the_page_and_its_files_are_served_with_a_strict_policy_and_no_token(
    tmp_path: Path, read_auth: bool
) -> None:
    async with api_daemon(tmp_path, read_auth=read_auth) as api:
        for path, (name, ctype) in dashboard.FILES.items():
            async with api.session.get(api.url + path) as r:
                assert r.status == 200, path
                assert r.content_type == ctype
                assert r.headers["Content-Security-Policy"] == dashboard.CSP
                assert r.headers["X-Content-Type-Options"] == "nosniff"
                assert r.headers["X-Frame-Options"] == "DENY"
                assert await r.read() == (STATIC / name).read_bytes()
                etag = r.headers["ETag"]
            # A browser revalidates: same file, no body.
            async with api.session.get(api.url + path, headers={"If-None-Match": etag}) as r:
                assert r.status == 304
                assert await r.read() == b""
        # The data still needs the token when reads do.
        async with api.session.get(api.url + "/api/v1/stats") as r:
            assert r.status == (401 if read_auth else 200)
        # Only the listed files: nothing else under /static reaches the file system.
        for path in ("/static/", "/static/../dashboard.py", "/static/index.html", "/app.js"):
            async with api.session.get(api.url + path) as r:
                assert r.status == (401 if read_auth else 404), path
                assert r.content_type == "application/json"


async def test_the_openapi_document_lists_the_page_as_public(tmp_path: Path) -> None:
    async with (
        api_daemon(tmp_path, read_auth=False) as api,
        api.session.get(api.url + "/api/v1/openapi.json") as r,
    ):
        doc = await r.json()
    for path, (_, ctype) in dashboard.FILES.items():
        op = doc["paths"][path]["get"]
        assert op["security"] == []
        assert "401" not in op["responses"]
        assert ctype in op["responses"]["200"]["content"]
    assert doc["paths"]["/health"]["get"]["security"] == []
    assert doc["paths"]["/api/v1/stats"]["get"]["security"] == [{}, {"bearer": []}]


async def test_with_read_auth_a_browser_offers_the_token_as_a_websocket_subprotocol(
    tmp_path: Path,
) -> None:
    async with api_daemon(tmp_path, read_auth=True) as api:
        ws_url = api.url.replace("http://", "ws://") + "/ws/v1/updates"
        for protocols in ((FEED_PROTOCOL,), (FEED_PROTOCOL, "bearer.wrong-token")):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await api.session.ws_connect(ws_url, protocols=protocols)
            assert refused.value.status == 401
        async with api.session.ws_connect(
            ws_url, protocols=(FEED_PROTOCOL, "bearer." + TOKEN)
        ) as ws:
            # The answer names the feed's protocol, never the one carrying the token.
            assert ws.protocol == FEED_PROTOCOL
            hello = await ws.receive_json(timeout=5)
            assert hello["type"] == "connection"
        # A client that sends the header needs no subprotocol.
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with api.session.ws_connect(ws_url, headers=headers) as ws:
            assert ws.protocol is None
            assert (await ws.receive_json(timeout=5))["type"] == "connection"


def test_the_files_build_no_markup_from_data_and_stay_small() -> None:
    script = (STATIC / "app.js").read_text()
    for sink in (
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
        "setAttribute('style'",
        "cssText",
        "DOMParser",
    ):
        assert sink not in script, sink
    page = (STATIC / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\ssrc=)", page), "inline script"
    assert not re.search(r"\sstyle=|<style", page), "inline style"
    assert not re.search(r"\son[a-z]+=", page), "inline event handler"
    assert not re.search(r"(src|href)=\"(https?:)?//", page), "something loaded from elsewhere"
    referenced = set(re.findall(r"(?:src|href)=\"(/static/[^\"]+)\"", page))
    assert referenced <= set(dashboard.FILES), referenced - set(dashboard.FILES)
    assert sum((STATIC / name).stat().st_size for name, _ in dashboard.FILES.values()) < (
        MAX_PAGE_BYTES
    )
    shipped = {p.name for p in STATIC.iterdir()}
    assert shipped == {name for name, _ in dashboard.FILES.values()}, "a file nobody serves"


def test_a_built_package_ships_the_dashboard(tmp_path: Path) -> None:
    """What a non-editable install gets: setuptools' own build of the packages, from
    pyproject.toml's package data (offline, no wheel needed)."""
    build = f"""
import warnings
warnings.simplefilter("ignore")
from setuptools.config.pyprojecttoml import apply_configuration
from setuptools.dist import Distribution
dist = Distribution()
apply_configuration(dist, "pyproject.toml")
dist.script_name = "setup.py"
cmd = dist.get_command_obj("build_py")
cmd.build_lib = {str(tmp_path / "lib")!r}
cmd.compile = 0
cmd.ensure_finalized()
cmd.run()
"""
    result = subprocess.run(
        [sys.executable, "-c", build], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    built = tmp_path / "lib" / "hlcopy" / "api" / "static"
    for name, _ in dashboard.FILES.values():
        assert (built / name).read_bytes() == (STATIC / name).read_bytes(), name
