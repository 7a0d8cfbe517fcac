"""``python -m processor`` is the same as the ``bandit-processor`` command."""

from __future__ import annotations

import sys

from processor.cli import main

if __name__ == "__main__":
    sys.exit(main())
