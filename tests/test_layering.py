"""Dependencies run one way (style.md): checked on the source with `ast`, imports inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "facenas"
COMMON = {"errors", "config", "__init__"}
ALLOWED = {
    "space": set(),
    "models": {"space"},
    "data": set(),
    "evaluate": {"space", "models", "data"},
    "train": {"space", "models", "data", "evaluate"},
    "search": {"space"},
    "export": {"space", "models", "data", "evaluate"},
    "serve": {"data", "evaluate", "export"},
    "cli": {"space", "models", "data", "train", "search", "evaluate", "export", "serve", "demo"},
}
# The doors from `search` into `train` (style.md) and `export` (timing a candidate): the evaluator module.
EXCEPTIONS = {("search/evaluator.py", "train"), ("search/evaluator.py", "export")}
HEAVY = ("torch", "torchvision", "timm", "cv2", "onnxruntime", "sklearn")


def facenas_imports(path: Path) -> list[tuple[str, bool]]:
    """(sub-package imported, at module level?) for every facenas import in a file."""
    tree = ast.parse(path.read_text())
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "facenas":
                found.append((parts[1] if len(parts) > 1 else "__init__", id(node) in top_level))
    return found


def test_core_never_imports_upwards():
    problems = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        owner = rel.parts[0] if len(rel.parts) > 1 else None
        if owner is None:
            continue
        for target, _ in facenas_imports(path):
            if target in COMMON or target == owner:
                continue
            if target not in ALLOWED[owner] and (rel.as_posix(), target) not in EXCEPTIONS:
                problems.append(f"{rel} imports facenas.{target}")
    assert not problems, problems


def test_nothing_core_imports_the_cli_or_the_service():
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] != "cli":
            assert all(t != "cli" for t, _ in facenas_imports(path)), rel
        if rel.parts[0] not in ("cli", "serve"):
            assert all(t != "serve" for t, _ in facenas_imports(path)), rel


def test_space_and_the_package_root_are_torch_free():
    for path in [*PACKAGE.joinpath("space").rglob("*.py"), PACKAGE / "__init__.py", PACKAGE / "config.py"]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            mods = ([node.module] if isinstance(node, ast.ImportFrom) and node.module else
                    [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            assert not any(m.split(".")[0] in HEAVY for m in mods), f"{path.name} imports {mods}"
