"""The planner stays pure: importing it or running `ftplan estimate` loads no torch, transformers or textual."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

HEAVY = ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "textual", "plotext", "pynvml",
         "huggingface_hub")

PROBE = """
import json, sys
{body}
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r})))
"""


def _loaded(body: str) -> list[str]:
    code = PROBE.format(body=body, heavy=HEAVY)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_every_planner_module_loads_nothing_heavy() -> None:
    root = Path(__file__).resolve().parents[2]
    modules = sorted(".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
                     for p in (root / "planner").rglob("*.py"))
    assert len(modules) > 20 and "planner.service" in modules
    assert _loaded("\n".join(f"import {m}" for m in modules)) == []


def test_the_public_api_loads_nothing_heavy() -> None:
    assert _loaded("import planner\nplanner.estimate('7b', method='lora', gpu='RTX 4090')") == []


def test_estimate_command_loads_nothing_heavy() -> None:
    body = ("import contextlib, io\nfrom tui.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    main(['estimate', '--model', '7b', '--method', 'qlora', '--gpu', 'H100', '--max-batch'])")
    assert _loaded(body) == []


def test_config_readers_import_yaml_only_to_read_a_file() -> None:
    code = "import sys, planner.configs; print('yaml' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False"


def _imports(package: Path) -> dict[str, set[str]]:
    """Module -> the modules of `package` it imports, at the top or inside a function (a function-level import
    only postpones a cycle); `if TYPE_CHECKING:` blocks never run, so they do not count."""
    modules = {}
    for file in package.rglob("*.py"):
        parts = file.relative_to(package.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    graph: dict[str, set[str]] = {}
    for name, file in modules.items():
        tree = ast.parse(file.read_text(encoding="utf-8"))
        type_checking = {id(n) for node in ast.walk(tree)
                         if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                         for statement in node.body for n in ast.walk(statement)}
        edges = graph.setdefault(name, set())
        for node in ast.walk(tree):
            if id(node) in type_checking:
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                # `from planner.configs import fix` names a module; `from planner.configs import Check` a package
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                           for a in node.names]
            else:
                continue
            edges.update(t for t in targets if t in modules and t != name)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return [*path[path.index(node):], node]
        if node in done:
            return None
        path.append(node)
        for target in sorted(graph[node]):
            if found := visit(target):
                return found
        path.pop()
        done.add(node)
        return None

    return next((found for node in sorted(graph) if (found := visit(node))), None)


def test_planner_modules_import_each_other_without_a_cycle() -> None:
    graph = _imports(Path(__file__).resolve().parents[2] / "planner")
    assert {"planner.spec", "planner.architectures", "planner.configs.read"} <= graph.keys()
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_check_sees_function_level_imports(tmp_path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from pkg.sub.b import B\n")
    (package / "a.py").write_text("import pkg.sub\n")
    (package / "sub" / "b.py").write_text("B = 1\n\ndef f():\n    from pkg import a\n")
    assert _cycle(_imports(package)) == ["pkg.a", "pkg.sub", "pkg.sub.b", "pkg.a"]
    (package / "sub" / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n")
    assert _cycle(_imports(package)) is None
