"""The API on a real aiohttp server inside a real daemon: bodies, statuses, auth, limits."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hlcopy.api.app import build_app, read_json, render_metrics
from hlcopy.api.server import ApiServer
from hlcopy.component import MetricFamily
from hlcopy.credentials import Secret
from hlcopy.daemon import Daemon
from hlcopy.notify import Notifier
from hypothesis import HealthCheck, given, settings
from prometheus_client.parser import text_string_to_metric_families

from tests.component.test_daemon import Probe
from tests.conftest import make_config, running
from tests.unit.test_config_hostile import junk_documents

TOKEN = "test-token-0123456789abcdef"


class Exploding(Probe):
    def stats(self) -> dict[str, Any]:
        raise RuntimeError("secret internals: /etc/passwd")


@dataclass
class Api:
    url: str
    session: aiohttp.ClientSession
    daemon: Daemon
    probe: Probe

    async def call(
        self, method: str, path: str, token: str | None = None, **kwargs: Any
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        headers = kwargs.pop("headers", {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        async with self.session.request(method, self.url + path, headers=headers, **kwargs) as r:
            body = await r.read()
            is_json = r.content_type == "application/json"
            return r.status, orjson.loads(body) if is_json else body.decode(), r


@pytest.fixture
async def api(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Api]:
    cfg_path = tmp_path / "hlcopy.toml"
    cfg_path.write_text(
        f'[state]\ndir = "{tmp_path}"\n[api]\nport = 0\nmax_body_bytes = 2048\n'
        '[logging]\nformat = "json"\n'
    )
    cfg = make_config(tmp_path, api={"port": 0, "max_body_bytes": 2048})
    daemon = Daemon(
        cfg, config_path=cfg_path, notifier=Notifier(""), backoff_base_s=30, backoff_cap_s=30
    )
    kind = getattr(request, "param", "plain")
    probe = Exploding("probe", []) if kind == "exploding" else Probe("probe", [])
    server = ApiServer(daemon, cfg.api, Secret(TOKEN))
    daemon.add(probe)
    daemon.add(server)
    async with running(daemon), aiohttp.ClientSession() as session:
        yield Api(f"http://127.0.0.1:{server.port}", session, daemon, probe)


async def test_health_metrics_stats(api: Api) -> None:
    status, body, _ = await api.call("GET", "/health")
    assert status == 200
    assert body["status"] == "ok"
    assert set(body["components"]) == {"probe", "api"}

    status, text, resp = await api.call("GET", "/metrics")
    assert status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["hlcopy_uptime_seconds"].type == "gauge"
    assert families["hlcopy_uptime_seconds"].documentation
    restarts = families["hlcopy_component_restarts"]
    assert restarts.type == "counter"
    assert {(s.name, s.labels["component"], s.value) for s in restarts.samples} >= {
        ("hlcopy_component_restarts_total", "probe", 0.0)
    }
    up = {s.labels["component"]: s.value for s in families["hlcopy_component_up"].samples}
    assert up == {"probe": 1.0, "api": 1.0}
    answers = [
        s.value
        for s in families["hlcopy_component_stat"].samples
        if s.labels == {"component": "probe", "stat": "answers"}
    ]
    assert answers == [42.0]
    # Families are grouped: each TYPE line appears once and before its samples.
    type_lines = [line for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(type_lines) == len(set(type_lines)) == len(families)

    status, body, _ = await api.call("GET", "/api/v1/stats")
    assert status == 200
    assert body["components"]["probe"]["answers"] == 42
    assert body["mode"] == "paper"


async def test_health_is_503_when_a_component_is_down(api: Api) -> None:
    api.probe.fail_now.set()
    async with asyncio.timeout(2):
        while True:
            status, body, _ = await api.call("GET", "/health")
            if status == 503:
                break
            await asyncio.sleep(0.01)
    assert body["components"]["probe"]["state"] == "restarting"
    assert (
        body["components"]["probe"]["last_error"] == "StoreUnavailable: probe lost its connection"
    )


@pytest.mark.parametrize(
    ("method", "path", "token", "status", "code", "message"),
    [
        ("GET", "/nope", None, 404, "not_found", "Not Found"),
        ("POST", "/api/v1/reload", None, 401, "unauthorized", "missing bearer token"),
        (
            "POST",
            "/api/v1/reload",
            "wrong-token-wrong-token",
            401,
            "unauthorized",
            "invalid bearer token",
        ),
        ("POST", "/nope", None, 401, "unauthorized", "missing bearer token"),
        ("DELETE", "/health", TOKEN, 405, "method_not_allowed", "Method Not Allowed"),
        ("PUT", "/api/v1/stats", TOKEN, 405, "method_not_allowed", "Method Not Allowed"),
    ],
)
async def test_error_bodies(
    api: Api, method: str, path: str, token: str | None, status: int, code: str, message: str
) -> None:
    got, body, resp = await api.call(method, path, token)
    assert got == status
    assert body == {"error": {"code": code, "message": message}}
    if status == 401:
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    if status == 405:
        assert "GET" in resp.headers["Allow"]


async def test_bearer_scheme_is_checked(api: Api) -> None:
    status, _, _ = await api.call(
        "POST", "/api/v1/reload", headers={"Authorization": f"Basic {TOKEN}"}
    )
    assert status == 401
    status, body, _ = await api.call("POST", "/api/v1/reload", TOKEN)
    assert (status, body) == (200, {"ok": True, "changed": [], "restart_required": []})


async def test_oversize_bodies_get_413(api: Api) -> None:
    status, body, _ = await api.call("POST", "/api/v1/reload", TOKEN, data=b"x" * 4096)
    assert status == 413
    assert body["error"]["code"] == "payload_too_large"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: caught while reading
        for _ in range(8):
            yield b"y" * 1024

    app = build_app(api.daemon, api.daemon.config.api, Secret(TOKEN))

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"got": await read_json(request)})

    app.router.add_post("/echo", echo)
    async with TestClient(TestServer(app)) as client:
        r = await client.post("/echo", data=chunks(), headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status == 413
        assert (await r.json())["error"]["code"] == "payload_too_large"

        r = await client.post(
            "/echo", data=b"{not json", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert r.status == 400
        body = await r.json()
        assert body["error"]["code"] == "bad_request"
        assert body["error"]["message"].startswith("the body is not valid JSON")

        r = await client.post(
            "/echo", data=b'{"a": 1}', headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert (r.status, await r.json()) == (200, {"got": {"a": 1}})


async def test_reload_with_a_broken_file_is_a_400_listing_problems(api: Api) -> None:
    assert api.daemon.config_path is not None
    api.daemon.config_path.write_text("[api]\nport = -1\n")
    status, body, _ = await api.call("POST", "/api/v1/reload", TOKEN)
    assert status == 400
    assert body["error"]["code"] == "invalid_config"
    assert body["error"]["problems"] == ["api.port: must be greater than or equal to 0"]


@pytest.mark.parametrize("api", ["exploding"], indirect=True)
async def test_500_leaks_no_internals(api: Api, log_stream: io.StringIO) -> None:
    status, body, _ = await api.call("GET", "/api/v1/stats")
    assert status == 500
    assert body == {"error": {"code": "internal", "message": "internal error"}}
    assert "secret internals" in log_stream.getvalue()  # the log keeps the details


async def test_read_auth_protects_reads_but_not_health(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, api={"port": 0, "read_auth": True})
    daemon = Daemon(cfg, notifier=Notifier(""))
    server = ApiServer(daemon, cfg.api, Secret(TOKEN))
    daemon.add(server)
    async with running(daemon), aiohttp.ClientSession() as s:
        base = f"http://127.0.0.1:{server.port}"
        async with s.get(base + "/health") as r:
            assert r.status == 200
        async with s.get(base + "/api/v1/stats") as r:
            assert r.status == 401
        async with s.get(base + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            assert r.status == 200


async def test_port_in_use_is_a_clear_fatal_error(tmp_path: Path) -> None:
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    try:
        cfg = make_config(tmp_path, api={"port": port})
        daemon = Daemon(cfg, notifier=Notifier(""))
        daemon.add(ApiServer(daemon, cfg.api, Secret(TOKEN)))
        assert await asyncio.wait_for(daemon.run(), 5) == 1
        assert "cannot listen on 127.0.0.1" in str(
            daemon.health()[1]["components"]["api"]["last_error"]
        )
    finally:
        blocker.close()
        await blocker.wait_closed()


def test_render_metrics_round_trips_awkward_labels_through_the_official_parser() -> None:
    awkward = 'x"y\\z\n'
    body = render_metrics(
        lambda: [
            MetricFamily("m", "counter", "a counter", [({"a": awkward}, 1.0), ({}, 2.0)]),
            MetricFamily("g", "gauge", "a gauge", [({}, 0.5)]),
        ]
    ).decode()
    families = {f.name: f for f in text_string_to_metric_families(body)}
    assert families["m"].type == "counter"
    assert [(s.name, s.labels.get("a"), s.value) for s in families["m"].samples] == [
        ("m_total", awkward, 1.0),
        ("m_total", "", 2.0),
    ]
    assert [(s.name, s.value) for s in families["g"].samples] == [("g", 0.5)]


@pytest.mark.parametrize(
    "value",
    [b"Bearer \xc3\xa9t\xc3\xa9", b"Bearer \xff\xfe", b"\xff\xfe \xff", b"Bearer " + b"\x80" * 40],
    ids=["utf8", "invalid-utf8", "scheme-junk", "long-high-bytes"],
)
async def test_non_ascii_authorization_is_a_json_401(api: Api, value: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", int(api.url.rsplit(":", 1)[1]))
    try:
        writer.write(
            b"POST /api/v1/reload HTTP/1.1\r\nHost: x\r\nAuthorization: "
            + value
            + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401"), head
    assert orjson.loads(body)["error"]["code"] == "unauthorized"


async def _raw(api: Api, request: bytes) -> tuple[bytes, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", int(api.url.rsplit(":", 1)[1]))
    try:
        writer.write(request)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return head, body


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET /\x00health HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /api/v1/reload HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
    ],
    ids=["not-http", "bad-header", "bad-version", "nul-in-path", "negative-length", "huge-header"],
)
async def test_protocol_level_garbage_gets_a_short_json_error(
    api: Api, request_bytes: bytes, log_stream: io.StringIO
) -> None:
    head, body = await _raw(api, request_bytes)
    status = int(head.split(b" ", 2)[1])
    assert 400 <= status < 500, head
    assert b"application/json" in head
    assert orjson.loads(body)["error"]["message"]
    assert len(body) < 200
    logged = [orjson.loads(line) for line in log_stream.getvalue().splitlines()]
    rejected = [e for e in logged if e["event"] == "api request rejected before routing"]
    assert len(rejected) == 1
    assert "Traceback" not in log_stream.getvalue()
    assert not any(e.get("level") == "error" for e in logged)


async def test_a_flood_of_garbage_logs_only_a_few_lines(api: Api, log_stream: io.StringIO) -> None:
    for _ in range(50):
        head, _ = await _raw(api, b"GARBAGE\r\n\r\n")
        assert b" 400 " in head
    logged = [orjson.loads(line) for line in log_stream.getvalue().splitlines()]
    rejected = [e for e in logged if e["event"] == "api request rejected before routing"]
    assert 1 <= len(rejected) <= 5
    # The API keeps serving.
    status, _, _ = await api.call("GET", "/health")
    assert status == 200


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(text=junk_documents())
async def test_reload_with_generated_junk_is_never_a_5xx(api: Api, text: str) -> None:
    assert api.daemon.config_path is not None
    api.daemon.config_path.write_bytes(text.encode("utf-8", "surrogatepass"))
    status, body, _ = await api.call("POST", "/api/v1/reload", TOKEN)
    assert status in (200, 400), body
    if status == 400:
        assert body["error"]["code"] == "invalid_config"
        assert body["error"]["problems"]
    assert api.daemon.health()[0]
