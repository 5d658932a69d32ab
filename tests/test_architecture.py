"""The house's rooms and the direction of their imports (issue 28).

Rooms: the ground floor (``streamrec.runtime``: configuration, Kafka clients, logging, atomic
files, how to reach Ray), the contract (``features``), three stages (``pipelines``, ``ray_jobs``,
``serving``) and the shell (the rest of ``streamrec``: CLI, demo, report, local stack). An arrow
may point down only: the ground floor imports nothing of ours, the contract imports the ground
floor, a stage imports the ground floor and the contract (never another stage), the shell may
import anything. Nothing imports ``deploy`` (configuration, and tools that build it) or ``tests``.

Every import statement counts, at any depth (a function-level import is still an arrow). The
arrows that still run the wrong way are listed in ``KNOWN_UPSTREAM`` with why; the list may only
shrink: a new wrong arrow fails, and so does an entry that no longer exists.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("features", "pipelines", "ray_jobs", "serving", "streamrec", "deploy")
GROUND = "streamrec.runtime"
MAY_IMPORT = {
    "ground": {"ground"},
    "features": {"ground", "features"},
    "pipelines": {"ground", "features", "pipelines"},
    "ray_jobs": {"ground", "features", "ray_jobs"},
    "serving": {"ground", "features", "serving"},
    "shell": {"ground", "features", "pipelines", "ray_jobs", "serving", "shell"},
    "deploy": {"ground", "features", "deploy"},
}

# (importing module, imported module) -> why it is still there. Remove an entry when its arrow goes.
KNOWN_UPSTREAM: dict[tuple[str, str], str] = {}


def room_of(module: str) -> str | None:
    """The room a dotted module name lives in (None: not ours)."""
    if module == GROUND or module.startswith(GROUND + "."):
        return "ground"
    top = module.split(".")[0]
    if top == "streamrec":
        return "shell"
    return top if top in PACKAGES else None


def _module_name(path: Path) -> str:
    name = ".".join(path.relative_to(REPO).with_suffix("").parts)
    return name.removesuffix(".__init__")


def _imported(tree: ast.AST, package: str) -> list[tuple[str, int]]:
    """Every (absolute module, line) an import statement of the file names."""
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((module, node.lineno))
    return found


def import_arrows() -> list[tuple[str, str, int]]:
    """(importer, imported, line) for every import between our packages."""
    arrows = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            importer = _module_name(path)
            own_package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
            for imported, line in _imported(ast.parse(path.read_text(), str(path)), own_package):
                if room_of(imported) is not None:
                    arrows.append((importer, imported, line))
    return arrows


def upstream_arrows() -> dict[tuple[str, str], int]:
    return {(importer, imported): line for importer, imported, line in import_arrows()
            if room_of(imported) not in MAY_IMPORT[room_of(importer)]}


def test_every_arrow_points_downstream() -> None:
    found = upstream_arrows()
    new = {arrow: line for arrow, line in found.items() if arrow not in KNOWN_UPSTREAM}
    assert not new, "imports against the house's direction:\n" + "\n".join(
        f"  {importer} ({room_of(importer)}) -> {imported} ({room_of(imported)}), line {line}"
        for (importer, imported), line in sorted(new.items()))


def test_the_list_of_known_upstream_arrows_only_shrinks() -> None:
    gone = set(KNOWN_UPSTREAM) - set(upstream_arrows())
    assert not gone, f"these arrows are gone: remove them from KNOWN_UPSTREAM: {sorted(gone)}"


def test_the_ground_floor_imports_nothing_above_it() -> None:
    for importer, imported, line in import_arrows():
        if room_of(importer) == "ground":
            assert room_of(imported) == "ground", f"{importer} imports {imported} (line {line})"


@pytest.mark.parametrize(("module", "room"), [
    ("streamrec.runtime.config", "ground"), ("streamrec.cli", "shell"), ("features.events", "features"),
    ("serving.app.api", "serving"), ("numpy", None), ("streamrecx", None),
])
def test_rooms(module: str, room: str | None) -> None:
    assert room_of(module) == room


def test_the_scanner_sees_function_level_and_relative_imports() -> None:
    tree = ast.parse("def f():\n    from serving.app import api\nfrom .sibling import x\nimport ray_jobs.models\n")
    assert sorted(_imported(tree, "pipelines.sub"), key=lambda found: found[1]) == [
        ("serving.app", 2), ("pipelines.sub.sibling", 3), ("ray_jobs.models", 4)]
