"""Truth helpers never import the code they judge.

A truth helper builds its models and measurements from transformers / peft / bitsandbytes /
torch / DeepSpeed alone. If it imported `planner`, `diagnostics` or `tui` (at module level or
inside a function, directly or through another test module), part of the "truth" would be the
code under test. Every `tests/**/truth*.py` is checked, plus any module named in TRUTH_MODULES.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("planner", "diagnostics", "tui")
# Truth helpers whose file name does not start with "truth" (dotted module names, under the repository root).
TRUTH_MODULES: list[str] = []


def truth_files() -> list[Path]:
    found = set((ROOT / "tests").rglob("truth*.py"))
    found |= {module_file(name) for name in TRUTH_MODULES}
    return sorted(found)


def module_file(name: str) -> Path:
    base = ROOT.joinpath(*name.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(source: str, name: str, is_package: bool = False) -> list[tuple[str, int]]:
    """Every module name `source` imports, anywhere in it: statements at any depth (functions,
    classes, try blocks), relative imports resolved against `name`, and string arguments of
    `importlib.import_module` / `__import__`."""
    package = name if is_package else name.rpartition(".")[0]
    out: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".") if package else []
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                target = ".".join(p for p in (base, node.module) if p)
            else:
                target = node.module or ""
            if target:
                out.append((target, node.lineno))
            # `from tests.planner import truth` imports the submodule `tests.planner.truth`
            out += [(".".join(p for p in (target, alias.name) if p), node.lineno) for alias in node.names]
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called in ("import_module", "__import__") and node.args \
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                out.append((node.args[0].value, node.lineno))
    return out


def forbidden_imports(path: Path) -> list[str]:
    """`file:line imports name` for each forbidden import reachable from `path` through local test modules."""
    problems: list[str] = []
    seen: set[Path] = set()
    todo = [path]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        name = module_name(current)
        for imported, line in imported_names(current.read_text(), name, current.name == "__init__.py"):
            top = imported.split(".")[0]
            if top in FORBIDDEN:
                problems.append(f"{current.relative_to(ROOT)}:{line} imports {imported}")
            elif top == "tests":
                local = module_file(imported)
                if local.exists():
                    todo.append(local)
    return problems


def test_there_are_truth_helpers() -> None:
    names = {p.name for p in truth_files()}
    assert "truth.py" in names, names


@pytest.mark.parametrize("path", truth_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_truth_helper_imports_no_code_under_test(path: Path) -> None:
    assert forbidden_imports(path) == []


def test_the_check_sees_every_kind_of_import(tmp_path) -> None:
    """The checker itself: imports nested in functions, relative imports and import_module all count."""
    source = (
        "import torch\n"
        "def f():\n"
        "    from planner.memory import estimate_memory\n"
        "class C:\n"
        "    def g(self):\n"
        "        import diagnostics.models as m\n"
        "try:\n"
        "    import tui\n"
        "except ImportError:\n"
        "    pass\n"
        "def h():\n"
        "    import importlib\n"
        "    importlib.import_module('planner.plan')\n"
        "from ... import planner\n"
    )
    found = {name.split(".")[0] for name, _ in imported_names(source, "tests.planner.truth_x")}
    assert {"planner", "diagnostics", "tui"} <= found
    relative = [name for name, line in imported_names(source, "tests.planner.truth_x") if line == 14]
    assert "planner" in relative  # `from ... import planner` two packages up from tests.planner
