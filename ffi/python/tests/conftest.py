"""Makes the in-tree package importable without installing it."""

import sys
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # ffi/python
if str(PACKAGE_ROOT) not in sys.path:
    sys.path.insert(0, str(PACKAGE_ROOT))
