"""A simulated Hyperliquid: the same wire protocol, verified signatures and nonces, weights,
WebSocket limits, fault switches and a seeded market of synthetic traders."""

from hlcopy.sim.server import SimConfig, Simulator

__all__ = ["SimConfig", "Simulator"]
