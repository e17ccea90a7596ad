"""``python -m hlcopy`` and the ``hlcopy`` command: a daemon's signals are remembered before
the CLI's imports (``signals.py``), then the CLI runs."""

import sys

from hlcopy import signals


def run() -> int:
    signals.capture_for(sys.argv[1:])
    from hlcopy.cli import main

    return main()


if __name__ == "__main__":
    raise SystemExit(run())
