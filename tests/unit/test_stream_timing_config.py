"""``network.ws_ping_interval_s``, ``ws_silence_timeout_s`` and ``ws_reconnect_*``: how soon a
half-open WebSocket is noticed and how fast a dropped one comes back, configurable (the chaos
suite compresses them), never a ping interval a quiet connection would be recycled within."""

from __future__ import annotations

import pytest
from hlcopy.config import parse_config
from hlcopy.errors import ConfigError


def test_defaults_match_the_exchange_idle_timeout() -> None:
    net = parse_config({}).network
    assert (net.ws_ping_interval_s, net.ws_silence_timeout_s) == (50.0, 60.0)
    assert (net.ws_reconnect_base_s, net.ws_reconnect_cap_s) == (0.5, 30.0)
    net = parse_config({"network": {"ws_ping_interval_s": 1, "ws_silence_timeout_s": 2.5}}).network
    assert (net.ws_ping_interval_s, net.ws_silence_timeout_s) == (1.0, 2.5)


def test_a_reconnect_base_above_its_cap_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"network": {"ws_reconnect_base_s": 5, "ws_reconnect_cap_s": 1}})
    assert info.value.problems == [
        "network.ws_reconnect_base_s: must not exceed network.ws_reconnect_cap_s"
    ]


@pytest.mark.parametrize(("ping", "silence"), [(60, 60), (70, 60), (5, 0.1)])
def test_a_ping_interval_not_below_the_silence_timeout_is_refused(
    ping: float, silence: float
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"network": {"ws_ping_interval_s": ping, "ws_silence_timeout_s": silence}})
    assert any(p.startswith("network.ws_") for p in info.value.problems), info.value.problems
