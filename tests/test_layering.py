"""Library folders never import Prefect; arrows point flows -> {data, unimoe, evaluation}."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(package: str) -> dict[str, set[str]]:
    found = {}
    for py in (ROOT / package).rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(py.read_text(), str(py))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(py.relative_to(ROOT))] = names
    return found


def test_libraries_do_not_import_prefect_or_flows():
    bad = []
    forbidden = {"unimoe": {"prefect", "prefect_dask", "flows", "data", "evaluation"},
                 "data": {"prefect", "prefect_dask", "flows", "evaluation"},
                 "evaluation": {"prefect", "prefect_dask", "flows", "data"}}
    for package, banned in forbidden.items():
        for path, names in _imports(package).items():
            if names & banned:
                bad.append(f"{path}: {sorted(names & banned)}")
    assert bad == []


def test_importing_the_model_loads_no_prefect():
    code = "import sys, unimoe.model, unimoe.generation, unimoe.codec; assert 'prefect' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
