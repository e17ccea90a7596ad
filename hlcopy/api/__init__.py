"""The JSON API: aiohttp inside the daemon's loop."""
