"""``bench/run --failover``: what ``wait_for_replicas`` saves across a primary's crash, and
what it costs.

The command only; what it does is in ``runners/failover.py`` (``--help`` lists the options).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from runners.failover import main

if __name__ == "__main__":
    sys.exit(main())
