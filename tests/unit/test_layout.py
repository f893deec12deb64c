"""The package's parts depend on each other one way only, as the README's map says.

``_common`` serves both layers and knows neither; ``_queue`` (the core layer) and ``_pubsub``
(the pub/sub layer) build on ``_common`` and never on each other; the private parts import
no public module but the leaf types (``exceptions``, ``stats``); ``_cli`` sits above all.
Every import counts, including those under ``TYPE_CHECKING`` and inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import channels_valkey

PACKAGE = Path(channels_valkey.__file__).parent
LEAF_TYPES = {"exceptions", "stats"}

#: For each private part, the other parts and public modules it may import.
ALLOWED = {
    "_common": LEAF_TYPES,
    "_queue": {"_common"} | LEAF_TYPES,
    "_pubsub": {"_common"} | LEAF_TYPES,
}


def part_of(path: Path) -> str:
    """The first name under the package: a folder (``_queue``) or a public module (``core``)."""
    return path.relative_to(PACKAGE).with_suffix("").parts[0]


def imported_parts(path: Path) -> set[str]:
    """The parts of the package that the module at ``path`` imports, by first name."""
    package = path.relative_to(PACKAGE).parent.parts
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - (node.level - 1)])
                target = base + (node.module.split(".") if node.module else [])
                names = [".".join(["channels_valkey", *target])]
                if not node.module:
                    names = [".".join(["channels_valkey", *base, a.name]) for a in node.names]
            else:
                names = [node.module or ""]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "channels_valkey" and len(parts) > 1:
                found.add(parts[1])
    return found


PRIVATE_MODULES = sorted(path for part in ALLOWED for path in (PACKAGE / part).rglob("*.py"))


@pytest.mark.parametrize("path", PRIVATE_MODULES, ids=lambda path: str(path.relative_to(PACKAGE)))
def test_a_part_imports_only_what_it_builds_on(path: Path) -> None:
    part = part_of(path)
    stray = imported_parts(path) - ALLOWED[part] - {part}
    assert not stray, f"{path.relative_to(PACKAGE)} imports {sorted(stray)}"


def test_every_private_module_belongs_to_a_part() -> None:
    """No private module sits loose beside the public ones: each lives in a part's folder."""
    loose = sorted(
        path.name
        for path in PACKAGE.glob("_*.py")
        if path.name not in {"__init__.py", "__main__.py"}
    )
    assert loose == []


def test_the_check_sees_imports() -> None:
    """The walk above finds relative, absolute and nested imports (else it would pass vacuously)."""
    found = imported_parts(PACKAGE / "_queue" / "cluster.py")
    assert {"_common", "_queue", "exceptions"} <= found
    assert {"_cli", "_common", "_queue", "core", "pubsub"} <= imported_parts(
        PACKAGE / "_cli" / "main.py"
    )
