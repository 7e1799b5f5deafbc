"""The library's layout: data flows one way through the subpackages, no module imports
another in a cycle, and nothing under radpath/ imports the demo generators."""

from __future__ import annotations

import ast
from pathlib import Path

RADPATH = Path(__file__).resolve().parents[2] / "radpath"
# Each subpackage may import only those before it; cli and slurm sit on top.
ORDER = ["inputs", "nn", "radiomics", "pathology", "survival", "deep", "synthesis", "report"]


def module_name(path: Path) -> str:
    parts = path.relative_to(RADPATH.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """radpath modules `path` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if module_path(candidate) else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.split(".")[0] in ("radpath", "radpath_demo")}


def module_path(name: str) -> Path | None:
    base = RADPATH.parent / name.replace(".", "/")
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


GRAPH = {module_name(path): imports_of(path) for path in RADPATH.rglob("*.py")}


def stage(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "radpath"


def test_subpackages_import_only_those_before_them():
    wrong = []
    for module, imported in GRAPH.items():
        if stage(module) not in ORDER:
            continue  # radpath.cli, radpath.slurm: the top
        for target in imported:
            if stage(target) != stage(module) and (
                stage(target) not in ORDER
                or ORDER.index(stage(target)) > ORDER.index(stage(module))
            ):
                wrong.append(f"{module} imports {target}")
    assert not wrong, wrong


def test_no_module_imports_itself_through_others():
    def reaches(start: str, target: str, seen: set[str]) -> bool:
        for name in GRAPH.get(start, ()):
            if name == target:
                return True
            if name not in seen:
                seen.add(name)
                if reaches(name, target, seen):
                    return True
        return False

    cycles = [module for module in GRAPH if reaches(module, module, set())]
    assert not cycles, cycles


def test_the_library_does_not_import_the_demo():
    assert not [m for m, imported in GRAPH.items()
                if any(name.startswith("radpath_demo") for name in imported)]
