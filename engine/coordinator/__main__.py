"""``python -m engine.coordinator --data-dir DIR``: run the coordinator in the foreground."""

from __future__ import annotations

import sys

from engine.coordinator import main

if __name__ == "__main__":
    sys.exit(main())
