"""Where every mode's results go, and how they are written: ``<stamp>.json`` and ``.md``.

The JSON keeps every record (so ``--render`` can print a report again, or pool runs), the
Markdown the report as printed. Earlier results are never rewritten by a run; a mode's
stamp is its prefix (``cluster-``, ``burst-``, ...) and the UTC time the run started.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

#: ``bench/results``, the default of every mode's ``--results``.
RESULTS = Path(__file__).resolve().parents[1] / "results"


def stamp_of(started: datetime, prefix: str = "") -> str:
    """``<prefix><UTC time>``, e.g. ``burst-20261130T061940Z``."""
    return prefix + started.strftime("%Y%m%dT%H%M%SZ")


def save_results(folder: Path, stamp: str, result: Any, report: str) -> None:
    """``<stamp>.json`` (every record) and ``<stamp>.md`` (the report) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stamp}.json").write_text(json.dumps(result, indent=1) + "\n")
    (folder / f"{stamp}.md").write_text(report)
