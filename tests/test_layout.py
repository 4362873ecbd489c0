"""The layout's one-way rule: the product never imports the test bench (`changedet.lab`)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "changedet"
LAB = PACKAGE / "lab"


def _product_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if LAB not in p.parents)


def _package_of(path: Path) -> str:
    """The package a module's relative imports resolve against (for __init__.py: itself)."""
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])


def _is_lab(name: str) -> bool:
    return name == "changedet.lab" or name.startswith("changedet.lab.")


def _lab_imports(source: str, package: str) -> list[str]:
    """Every import of the lab in a module's source, at any depth (module level, functions,
    branches): `import changedet.lab...`, `from changedet.lab... import`, `from changedet import
    lab`, their relative forms, and `import_module` / `__import__` of a literal lab name."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if _is_lab(a.name)]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            names = [base, *(f"{base}.{a.name}" for a in node.names)]
            found += [n for n in names if _is_lab(n)][:1]
        elif isinstance(node, ast.Call) and _dynamic_import_of(node):
            found.append(_dynamic_import_of(node))
    return found


def _dynamic_import_of(call: ast.Call) -> str:
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    if name not in ("import_module", "__import__") or not call.args:
        return ""
    arg = call.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and _is_lab(arg.value):
        return arg.value
    return ""


def test_the_walk_sees_every_form_of_import() -> None:
    """The checker itself: each way of importing the lab is caught, other imports are not."""
    sources = {
        "import changedet.lab.scene": True,
        "from changedet.lab.score import match": True,
        "from changedet import lab": True,
        "from ..lab import sample": True,
        "from .. import lab": True,
        "def f():\n    from changedet.lab import oscd": True,
        "if x:\n    import changedet.lab as bench": True,
        "import importlib\nimportlib.import_module('changedet.lab.cli')": True,
        "from changedet import models, labels": False,
        "import changedet.labels": False,
        "from ..read import cogs": False,
        "from . import lab": False,  # changedet.catalog.lab, not the bench
    }
    for source, expected in sources.items():
        found = _lab_imports(source, "changedet.catalog")
        assert bool(found) is expected, (source, found)


def test_no_product_module_imports_the_lab() -> None:
    modules = _product_modules()
    assert PACKAGE / "cli.py" in modules and PACKAGE / "pipeline.py" in modules
    offenders = {
        str(p.relative_to(PACKAGE)): _lab_imports(p.read_text(encoding="utf-8"), _package_of(p))
        for p in modules
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_cli_and_pipeline_run_without_loading_the_lab() -> None:
    """At run time too: import the CLI and the pipeline and render `changedet --help` (which lists
    `synth` and `eval`) in a fresh interpreter; no `changedet.lab` module gets loaded."""
    script = """
import sys
from click.testing import CliRunner
import changedet.cli, changedet.pipeline
result = CliRunner().invoke(changedet.cli.main, ["--help"])
assert result.exit_code == 0, result.output
assert "synth" in result.output and "eval" in result.output, result.output
loaded = sorted(m for m in sys.modules if m == "changedet.lab" or m.startswith("changedet.lab."))
print("LOADED:" + ",".join(loaded))
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "LOADED:\n" in proc.stdout, proc.stdout


def test_lab_commands_load_when_invoked() -> None:
    """The other half of the lazy loading: `changedet synth --help` does load the lab's CLI."""
    script = """
import sys
from click.testing import CliRunner
import changedet.cli
result = CliRunner().invoke(changedet.cli.main, ["synth", "--help"])
assert result.exit_code == 0, result.output
assert "oscd-series" in result.output and "sample" in result.output, result.output
print("LOADED:" + str("changedet.lab.cli" in sys.modules))
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "LOADED:True" in proc.stdout, proc.stdout
