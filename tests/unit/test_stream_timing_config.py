"""``network.ws_ping_interval_s`` and ``network.ws_silence_timeout_s``: how soon a half-open
WebSocket is noticed, configurable (the chaos suite shortens it), and never a ping interval a
quiet connection would be recycled within."""

from __future__ import annotations

import pytest
from hlcopy.config import parse_config
from hlcopy.errors import ConfigError


def test_defaults_match_the_exchange_idle_timeout() -> None:
    net = parse_config({}).network
    assert (net.ws_ping_interval_s, net.ws_silence_timeout_s) == (50.0, 60.0)
    net = parse_config({"network": {"ws_ping_interval_s": 1, "ws_silence_timeout_s": 2.5}}).network
    assert (net.ws_ping_interval_s, net.ws_silence_timeout_s) == (1.0, 2.5)


@pytest.mark.parametrize(("ping", "silence"), [(60, 60), (70, 60), (5, 0.1)])
def test_a_ping_interval_not_below_the_silence_timeout_is_refused(
    ping: float, silence: float
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"network": {"ws_ping_interval_s": ping, "ws_silence_timeout_s": silence}})
    assert any(p.startswith("network.ws_") for p in info.value.problems), info.value.problems
