"""``bench/run --burst``: bursts in the example chat's room, real uvicorn and websocket clients.

The command only; what it does is in ``runners/burst.py`` (``--help`` lists the options).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from runners.burst import main

if __name__ == "__main__":
    sys.exit(main())
