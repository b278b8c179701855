"""The package's architecture as a contract: no import cycles, layers only import downwards, and
the plain-PyTorch core imports no Ray, MLflow, FastAPI or Typer. The rules and the graph live
in ``tools/import_graph.py`` (also a command that prints the graph's numbers)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("import_graph", ROOT / "tools" / "import_graph.py")
graph = importlib.util.module_from_spec(_spec)
sys.modules["import_graph"] = graph  # dataclasses look their module up there
_spec.loader.exec_module(graph)


@pytest.fixture(scope="module")
def modules():
    return graph.load()


def test_no_import_cycles(modules):
    assert graph.module_cycles(modules) == []
    assert graph.module_cycles(modules, in_functions=True) == []
    assert graph.package_cycles(modules) == []


def test_every_package_sits_in_a_layer_and_imports_only_downwards(modules):
    assert graph.violations(modules) == []


@pytest.mark.slow
def test_the_core_loads_without_ray_mlflow_fastapi_or_typer(modules):
    # The graph reads imports statically; this checks what importing the core really loads.
    core = sorted(f"dinet_platform.{name}" for name, module in modules.items()
                  if module.package in graph.CORE)
    forbidden = sorted(graph.FORBIDDEN_IN_CORE)
    code = ("import sys, importlib\n"
            f"for name in {core!r}: importlib.import_module(name)\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({forbidden!r})))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"


def test_the_contract_catches_planted_violations(tmp_path):
    planted = tmp_path / "dinet_platform"
    shutil.copytree(graph.ROOT, planted, ignore=shutil.ignore_patterns("__pycache__"))
    with (planted / "models" / "dinet.py").open("a") as module:  # the core reaching MLflow
        module.write("\nimport mlflow  # planted\n")
    with (planted / "media" / "io.py").open("a") as module:  # a primitive reaching the CLI
        module.write("\nfrom dinet_platform.cli.common import console  # planted\n")
    with (planted / "geometry.py").open("a") as module:  # closes a cycle with metrics
        module.write("\nfrom dinet_platform import metrics  # planted\n")
    with (planted / "metrics.py").open("a") as module:
        module.write("\nfrom dinet_platform import geometry  # planted\n")
    modules = graph.load(planted)
    found = graph.violations(modules)
    assert "models.dinet -> mlflow: the core imports no mlflow" in found
    assert any(line.startswith("media.io -> cli.common: layer 1 imports layer 7")
               for line in found)
    assert ["geometry", "metrics"] in graph.module_cycles(modules)
