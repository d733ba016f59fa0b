"""How the package hangs together: no import cycle among the data modules, and light commands start without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "benchmark"


def imported_modules(path: Path) -> set[str]:
    """``benchmark`` modules a file imports, at module level or inside functions (``benchmark.x``)."""
    here = "benchmark." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
    package = here.rsplit(".", 1)[0] if path.name != "__init__.py" else here.removesuffix(".__init__")
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target.startswith("benchmark"):
                found.add(target)
                found |= {f"{target}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("benchmark")}
    return found


def import_graph() -> dict[str, set[str]]:
    modules = {
        "benchmark." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__"): p
        for p in PACKAGE.rglob("*.py")
    }
    return {name: imported_modules(path) & set(modules) for name, path in modules.items()}


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


@pytest.mark.parametrize("module", ["benchmark.cache", "benchmark.sliceset", "benchmark.spill", "benchmark.paths"])
def test_data_modules_are_in_no_import_cycle(module):
    graph = import_graph()
    assert module in graph
    assert module not in reachable(graph, module), f"{module} imports itself through {sorted(reachable(graph, module))}"


def test_the_graph_sees_imports_inside_functions(tmp_path):
    """The cycle check would pass vacuously if deferred imports went unseen."""
    graph = import_graph()
    assert "benchmark.paths" in graph["benchmark.spill"]
    assert "benchmark.sliceset" in graph["benchmark.cache"]


LIGHT_COMMANDS = [["list"], ["validate", "bench.yaml"], ["--help"], ["show", "attack", "gan-synthetic"]]


@pytest.mark.parametrize("argv", LIGHT_COMMANDS, ids=" ".join)
def test_light_commands_start_without_torch(argv):
    """Listing, validating and help import no torch (nor MONAI): plugin modules keep their networks lazy."""
    script = (
        "import sys\nfrom benchmark.cli import main\n"
        f"try:\n    code = main({argv!r})\nexcept SystemExit as exc:\n    code = exc.code\n"
        "heavy = sorted(m for m in ('torch', 'monai') if m in sys.modules)\n"
        "print('HEAVY', heavy, file=sys.stderr)\nsys.exit(code)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=PACKAGE.parent, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "HEAVY []" in result.stderr, result.stderr[-2000:]


def test_the_torch_check_can_fail():
    """The same probe sees torch once something needs it (the training loop of the SDK)."""
    script = "import sys\nfrom benchmark import fit_binary_segmentation\nprint('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", script], cwd=PACKAGE.parent, capture_output=True, text=True, timeout=300)
    assert result.stdout.strip() == "True", result.stderr[-2000:]
