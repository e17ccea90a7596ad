"""hlcopy: a copy-trading daemon for Hyperliquid."""

__version__ = "0.1.0"
