"""Everything that speaks Hyperliquid's wire protocol; nothing above it sees wire dicts."""
