"""``bench/run --bulk``: bulk sends against loops of single sends, and a message-size sweep.

The command only; what it does is in ``runners/bulk.py`` (``--help`` lists the options).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from runners.bulk import main

if __name__ == "__main__":
    sys.exit(main())
