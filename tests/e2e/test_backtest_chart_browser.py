"""The backtest's SVG chart renders in a real browser with both curves visible: headless
Chromium takes a screenshot, and the screenshot's pixels inside the plot area show the leader's
colour and the copy's. Skipped when Debian's ``/usr/bin/chromium`` is missing, except on CI
(``CI=true``), where a missing browser fails the test."""

from __future__ import annotations

import os
import struct
import subprocess
import zlib
from pathlib import Path

import orjson
import pytest
from hlcopy.backtest import build_options, chart_svg, load_fills, offline_market, run_backtest
from hlcopy.chart import PALETTE

from tests.conftest import REPO

CHROMIUM = Path("/usr/bin/chromium")
FIXTURE = REPO / "tests" / "fixtures" / "hyperliquid" / "info_user_fills.json"
LEADER = "0xb7b6f3cea3f66bf525f5d8f965f6dbf6d9b017b2"
WIDTH, HEIGHT = 900, 420
PLOT = (78, 56, WIDTH - 24, HEIGHT - 48)  # left, top, right, bottom of the plot area


def decode_png(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit RGB or RGBA PNG: the chunks, inflate,
    and the five scanline filters."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    width = height = channels = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            assert depth == 8, depth
            assert color in (2, 6), color
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        flt = raw[start]
        line = bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = prev[i]
            corner = prev[i - channels] if i >= channels else 0
            if flt == 1:
                line[i] = (line[i] + left) & 0xFF
            elif flt == 2:
                line[i] = (line[i] + up) & 0xFF
            elif flt == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif flt == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                pred = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, rows


def near(pixel: tuple[int, int, int], hex_colour: str, tolerance: int = 60) -> bool:
    target = tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return sum(abs(a - b) for a, b in zip(pixel, target, strict=True)) <= tolerance


def test_the_chart_shows_both_curves_in_headless_chromium(tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(
                "CI needs /usr/bin/chromium for the browser tests (apt-get install chromium)"
            )
        pytest.skip("no /usr/bin/chromium (apt-get install -y chromium)")
    leader = load_fills(orjson.dumps(orjson.loads(FIXTURE.read_bytes())["response"]), LEADER, "f")
    since, until = leader.fills[0].time_ms, leader.fills[-1].time_ms + 60_000
    options = build_options([LEADER], {"ratio": "0.5"})
    result = run_backtest([leader], offline_market([leader]), options, since, until)
    chart = tmp_path / "chart.svg"
    chart.write_text(chart_svg([result], [LEADER]))
    shot = tmp_path / "chart.png"
    done = subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            f"--window-size={WIDTH},{HEIGHT}",
            chart.as_uri(),
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert shot.exists(), done.stderr[-2000:]
    width, height, rows = decode_png(shot.read_bytes())
    assert (width, height) == (WIDTH, HEIGHT)
    channels = len(rows[0]) // width
    left, top, right, bottom = PLOT
    counts = {PALETTE[0]: 0, PALETTE[1]: 0}
    background = 0
    for y in range(top + 2, bottom - 2):  # inside the plot area: not the legend's swatches
        row = rows[y]
        for x in range(left + 2, right - 2):
            pixel = (row[x * channels], row[x * channels + 1], row[x * channels + 2])
            if pixel == (255, 255, 255):
                background += 1
            for colour in counts:
                if near(pixel, colour):
                    counts[colour] += 1
    # A white plot with a line of each colour across it (each at least ~250 px long).
    assert background > 0.8 * (right - left) * (bottom - top)
    assert counts[PALETTE[0]] > 250, counts  # the leader's scaled curve
    assert counts[PALETTE[1]] > 250, counts  # the copy's
