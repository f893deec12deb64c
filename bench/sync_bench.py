"""``bench/run --sync``: publishing from synchronous code, ``channels_valkey.sync`` against
``async_to_sync``.

The command only; what it does is in ``runners/sync.py`` (``--help`` lists the options).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from runners.sync import main

if __name__ == "__main__":
    main()
