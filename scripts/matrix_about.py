"""Print what a CI matrix combination is made of: Python, server, valkey-py and its parser.

Run with the combination's Python: ``python scripts/matrix_about.py libvalkey|pure``. The
server is the one the test fixtures start (``CHANNELS_VALKEY_TEST_SERVER``, see
tests/support/servers.py). Exits non-zero when valkey-py does not read replies with the parser
the combination is meant to test, so a combination never passes while testing something else.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import valkey
import valkey.utils


def main() -> int:
    (wanted_parser,) = sys.argv[1:]
    command = (os.environ.get("CHANNELS_VALKEY_TEST_SERVER", "").strip() or "valkey") + "-server"
    try:
        words = subprocess.run(
            [command, "--version"], capture_output=True, text=True, check=False
        ).stdout.split()
    except OSError:
        words = []
    version = next((word.split("=", 1)[1] for word in words if word.startswith("v=")), "?")
    server = f"{'Redis' if 'Redis' in words else 'Valkey'} {version}"
    parser = "libvalkey" if valkey.utils.LIBVALKEY_AVAILABLE else "pure"
    print(
        f"Python {platform.python_version()}, {server}, valkey-py {valkey.__version__} ({parser})"
    )
    if parser != wanted_parser:
        print(
            f"valkey-py reads replies with the {parser} parser, not {wanted_parser}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
