"""The layout states the architecture: core/ (the method's arithmetic) depends on torch, numpy and scipy only.

core/ must stay usable without any model library, image library or UI, so every core module is checked two
ways: its import statements (all of them, function-level ones included), and what a fresh interpreter holds
after importing it (which also catches what its imports pull in).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import diffusion_classifier

PACKAGE = "diffusion_classifier"
CORE_DIR = Path(diffusion_classifier.__file__).parent / "core"
CORE_MODULES = sorted(f"{PACKAGE}.core.{p.stem}" for p in CORE_DIR.glob("*.py") if p.stem != "__init__")

#: third-party packages core may import
THIRD_PARTY = {"torch", "numpy", "scipy"}
#: libraries core must never load, directly or through another module
HEAVY = {"diffusers", "transformers", "datasets", "PIL", "matplotlib", "gradio"}
#: the package's own modules outside core/ that core may import. data.registry is the dataset registry
#: (plain dataclasses): names.py reads its schedule names and schedules.PUBLISHED builds from its entries.
PACKAGE_ALLOWED = {PACKAGE, f"{PACKAGE}.errors", f"{PACKAGE}.names", f"{PACKAGE}.data", f"{PACKAGE}.data.registry"}


def imported_modules(path: Path) -> list[str]:
    """Absolute names of every module the file imports (relative imports resolved; `from . import x` gives x)."""
    package = f"{PACKAGE}.core"
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                names.append(node.module or "")
                continue
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            if node.module:
                names.append(f"{base}.{node.module}")
            else:  # from . import a, b: a and b are modules of base
                names += [f"{base}.{alias.name}" for alias in node.names]
    return names


def allowed(module: str) -> bool:
    top = module.split(".")[0]
    if top == PACKAGE:
        return module in PACKAGE_ALLOWED or module.startswith(f"{PACKAGE}.core")
    return top == "__future__" or top in sys.stdlib_module_names or top in THIRD_PARTY


def test_the_core_modules_are_found():
    assert f"{PACKAGE}.core.estimator" in CORE_MODULES and f"{PACKAGE}.core.schedules" in CORE_MODULES


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_imports_only_torch_numpy_scipy_and_core(module):
    path = CORE_DIR / f"{module.rsplit('.', 1)[1]}.py"
    assert [name for name in imported_modules(path) if not allowed(name)] == []


@pytest.mark.parametrize("module", CORE_MODULES)
def test_importing_a_core_module_loads_nothing_heavy(module):
    code = f"import importlib, json, sys; importlib.import_module({module!r}); print(json.dumps(sorted(sys.modules)))"
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert sorted(m for m in loaded if m.split(".")[0] in HEAVY) == []
    assert sorted(m for m in loaded if m.split(".")[0] == PACKAGE and not allowed(m)) == []


def test_the_import_check_sees_a_forbidden_import(tmp_path):
    # the parser must resolve relative and function-level imports, or the check above would pass vacuously
    bad = tmp_path / "bad.py"
    source = "from ..pipeline import DiffusionClassifier\n\ndef f():\n    import diffusers\n    from . import noise\n"
    bad.write_text(source)
    names = imported_modules(bad)
    assert names == [f"{PACKAGE}.pipeline", "diffusers", f"{PACKAGE}.core.noise"]
    assert [allowed(n) for n in names] == [False, False, True]
