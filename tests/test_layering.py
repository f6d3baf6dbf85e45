"""The layers: flows -> {data, evaluation} -> unimoe. Libraries never import Prefect or flows; unimoe
never imports data or evaluation; data and evaluation never import each other. The scripts run as the
training worker belong to unimoe's layer.

An import counts however it is written: ``import x`` / ``from x import y`` (relative ones resolved),
``importlib.import_module("x")``, ``__import__("x")``, ``importlib.util.find_spec("x")``,
``pkgutil.resolve_name("x:y")``, and any string constant of the ``"module:attr"`` shape a loader
resolves (e.g. a factory named in a launch spec)."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PREFECT = {"prefect", "prefect_dask", "flows"}
FORBIDDEN = {
    "unimoe": PREFECT | {"data", "evaluation"},
    "data": PREFECT | {"evaluation"},
    "evaluation": PREFECT | {"data"},
}
# Scripts launched as (or by) the training worker: they run in unimoe's layer.
WORKER_SCRIPTS = ("scripts/train_worker.py",)
_LOADERS = {"import_module", "__import__", "find_spec", "resolve_name"}
_MODULE_ATTR = re.compile(r"[A-Za-z_]\w*(\.\w+)*:[A-Za-z_]\w*")


def _package(path: Path) -> str:
    """The package a file's relative imports start from."""
    return ".".join(path.relative_to(ROOT).parent.parts)


def imported_modules(source: str, package: str = "") -> set[str]:
    """Every module ``source`` (code in ``package``) imports, statically or through a loader."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - node.level + 1]
                found.add(".".join(base + ([node.module] if node.module else [])))
            else:
                found.add(node.module)
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            arg = node.args[0] if node.args else None
            if name in _LOADERS and isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.add(arg.value.split(":")[0])
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _MODULE_ATTR.fullmatch(
                node.value):
            found.add(node.value.split(":")[0])
    return found


def _violations(files, banned: set[str]) -> list[str]:
    bad = []
    for py in files:
        names = imported_modules(py.read_text(), _package(py))
        hit = sorted(n for n in names if n.split(".")[0] in banned)
        if hit:
            bad.append(f"{py.relative_to(ROOT)}: {hit}")
    return bad


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_library_imports_point_down_only(package):
    assert _violations(sorted((ROOT / package).rglob("*.py")), FORBIDDEN[package]) == []


def test_training_worker_scripts_stay_in_the_model_layer():
    assert _violations([ROOT / p for p in WORKER_SCRIPTS], FORBIDDEN["unimoe"]) == []


def _outside_common(names: set[str]) -> list[str]:
    """The imports a module of unimoe/common may not make: the layers above, and any unimoe module outside
    unimoe/common (the model code among them)."""
    return sorted(n for n in names if n.split(".")[0] in FORBIDDEN["unimoe"]
                  or (n.split(".")[0] == "unimoe" and n != "unimoe.common" and not n.startswith("unimoe.common.")))


def test_the_common_layer_imports_only_itself():
    """unimoe/common is the bottom layer every layer may import, so it imports nothing from unimoe outside
    itself (in particular no model code) and nothing from above; the checker flags exactly such imports."""
    files = sorted((ROOT / "unimoe" / "common").rglob("*.py"))
    assert files
    assert {str(f.relative_to(ROOT)): _outside_common(imported_modules(f.read_text(), _package(f)))
            for f in files} == {str(f.relative_to(ROOT)): [] for f in files}
    flagged = ["from unimoe.model import UniMoEAudio", "from .. import moe", "from ..io import sha256_file",
               "import unimoe.training.trainer", "from data.manifest import mark"]
    allowed = ["from .audio import to_mono", "from unimoe.common.files import atomic_path", "import numpy"]
    assert all(_outside_common(imported_modules(src, "unimoe.common")) for src in flagged)
    assert not any(_outside_common(imported_modules(src, "unimoe.common")) for src in allowed)


def test_the_checker_sees_every_way_of_importing():
    """What the tests above rely on: each spelling of an import of ``data`` is found, and text that only
    mentions the package (a docstring, an f-string, a path) is not."""
    spellings = [
        "import data.tokenize",
        "from data.tokenize import TokenShardReader",
        "from .. import tokenize",  # relative, from inside data/tokenize/ (below)
        "import importlib\nimportlib.import_module('data.tokenize')",
        "from importlib import import_module\nimport_module('data.tokenize')",
        "__import__('data.tokenize')",
        "import importlib.util\nimportlib.util.find_spec('data')",
        "spec = {'factory': 'data.tokenize:TokenShardReader'}",
    ]
    for src in spellings:
        names = imported_modules(src, "data.tokenize")
        assert any(n.split(".")[0] == "data" for n in names), (src, names)
    harmless = '"""Reads what ``data.tokenize:TokenShardReader`` wrote."""\nx = "data/tokenize"\ny = f"{x}:z"'
    assert not any(n.split(".")[0] == "data" for n in imported_modules(harmless, "unimoe"))
    assert imported_modules("from .shards import X", "unimoe.training") == {"unimoe.training.shards"}


def _run(code: str) -> None:
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_importing_the_libraries_loads_no_prefect():
    """At run time too (an import hidden behind a name built at run time is not on the syntax tree)."""
    modules = ("unimoe.model", "unimoe.generation", "unimoe.codec", "unimoe.training.launch",
               "unimoe.training.shards", "data.tokenize", "data.demo_corpus", "data.music_render",
               "data.speech_synth", "data.video_render", "evaluation.dashboard")
    _run(f"import sys\nfor m in {modules!r}: __import__(m)\n"
         "bad = [m for m in sys.modules if m.split('.')[0] in ('prefect', 'flows')]; assert not bad, bad")


def test_importing_the_common_layer_loads_no_model_code():
    """At run time: every module of unimoe/common loads no other unimoe module (the model, the codec, the
    trainer) and no model stack such as transformers."""
    modules = sorted(f"unimoe.common.{f.stem}" for f in (ROOT / "unimoe" / "common").glob("*.py")
                     if f.stem != "__init__")
    _run(f"import sys\nfor m in {modules!r}: __import__(m)\n"
         "bad = [m for m in sys.modules if (m.split('.')[0] in ('data', 'evaluation', 'prefect', 'flows', "
         "'transformers')) or (m.startswith('unimoe.') and not m.startswith('unimoe.common'))]\n"
         "assert not bad, bad")


def test_building_a_stage_dataset_loads_no_data_module(tmp_path):
    """The launcher's dataset path (what every torchrun rank runs) reads token shards without the data
    package."""
    _run("import sys\nfrom unimoe.training.launch import build_dataset, stage_spec\n"
         "from unimoe.training.shards import TokenizeError\n"
         f"spec = stage_spec('joint', {{}}, {str(tmp_path)!r}, 'o', 'r', 'v', {{}}, {{}})\n"
         "try:\n    build_dataset(spec)\nexcept TokenizeError:\n    pass\n"
         "else:\n    raise SystemExit('no error')\n"
         "bad = [m for m in sys.modules if m.split('.')[0] in ('data', 'evaluation', 'prefect', 'flows')]\n"
         "assert not bad, bad")
