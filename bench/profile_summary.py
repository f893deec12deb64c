"""Summarise a py-spy profile (``--format raw``) as plain-text tables:
``python3 bench/profile_summary.py PROFILE.raw``.

The command only; what it does is in ``reports/profile.py`` (``--help`` lists the options).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reports.profile import main

if __name__ == "__main__":
    sys.exit(main())
