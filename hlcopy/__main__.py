"""``python -m hlcopy``."""

from hlcopy.cli import main

raise SystemExit(main())
