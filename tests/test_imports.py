"""Import hygiene of the package.

- every module imports on its own into an interpreter without faceparse (one forked child per module);
- no import cycle among module-level ``faceparse.*`` imports (an AST walk; imports inside functions and
  ``if TYPE_CHECKING:`` blocks are lazy and do not count);
- ``import faceparse`` imports neither torch nor Lightning, albumentations, timm or
  segmentation-models-pytorch, and the registries find every registration (each module that
  registers is named in ``faceparse.registry``'s module lists).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import faceparse
import faceparse.registry as registry

PACKAGE_DIR = Path(faceparse.__file__).resolve().parent
HEAVY = ("pytorch_lightning", "lightning", "albumentations", "timm", "segmentation_models_pytorch", "torch")


# ---------------------------------------------------------------------------- module discovery
def module_files(root: Path = PACKAGE_DIR) -> dict[str, Path]:
    """``{dotted module name: file}`` of every ``.py`` file of the package."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level(stmts: list[ast.stmt]):
    """Statements run at import time: the body, descending into if/try/with but not into functions,
    classes or ``if TYPE_CHECKING:`` blocks."""
    for node in stmts:
        if isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _module_level(node.body)
            yield from _module_level(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from _module_level(block)
        elif isinstance(node, ast.With):
            yield from _module_level(node.body)
        else:
            yield node


def import_graph(files: dict[str, Path]) -> dict[str, set[str]]:
    """``{module: set of faceparse modules it imports at module level}``; relative imports resolved,
    ``from pkg import name`` counted as an import of ``pkg.name`` when that is a module, else of ``pkg``."""
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        package = mod if is_pkg else mod.rpartition(".")[0]
        edges: set[str] = set()
        for node in _module_level(ast.parse(path.read_text(), str(path)).body):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "faceparse":
                        edges.add(alias.name)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] != "faceparse":
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    edges.add(sub if sub in files else target)
        edges.discard(mod)  # ``from faceparse.x import y`` inside x itself is not a cycle
        graph[mod] = {e for e in edges if e in files}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    cycles.append(sorted(comp))
    return cycles


# ---------------------------------------------------------------------------- tests
def test_cycle_finder_finds_a_cycle_and_resolves_relative_imports(tmp_path):
    pkg = tmp_path / "faceparse"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from faceparse import a\n")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("from ..a import x\nimport os\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import faceparse.a\n")
    (pkg / "d.py").write_text("def f():\n    import faceparse.a\n")
    graph = import_graph(module_files(pkg))
    assert graph["faceparse"] == {"faceparse.a"} and graph["faceparse.a"] == {"faceparse.sub.b"}
    assert graph["faceparse.sub.b"] == {"faceparse.a"}
    assert graph["faceparse.c"] == set() and graph["faceparse.d"] == set()
    assert find_cycles(graph) == [["faceparse.a", "faceparse.sub.b"]]


def test_no_import_cycles():
    graph = import_graph(module_files())
    assert len(graph) > 50 and "faceparse.models.segface" in graph
    cycles = find_cycles(graph)
    detail = [" <-> ".join(c) + ": " + "; ".join(f"{m} -> {sorted(graph[m] & set(c))}" for m in c) for c in cycles]
    assert not cycles, "module-level import cycles:\n" + "\n".join(detail)


# Runs in one clean interpreter (one that never imported faceparse): it imports the third-party
# libraries once, then forks one child per faceparse module, two at a time, and each child imports its
# module into a faceparse-free interpreter. Hand-written instead of a subprocess per module: starting
# torch/Lightning from scratch 70+ times takes minutes on a 2-core machine.
_FORK_IMPORTER = r"""
import importlib, json, os, sys, traceback
PRELOAD = ("numpy", "cv2", "torch", "torchvision", "safetensors.torch", "torchmetrics", "timm",
           "segmentation_models_pytorch", "albumentations", "pytorch_lightning", "jsonargparse")
for lib in json.loads(sys.argv[2]) if len(sys.argv) > 2 else PRELOAD:
    try:
        importlib.import_module(lib)
    except ImportError:
        pass
assert not any(m.split(".")[0] == "faceparse" for m in sys.modules)
modules, running, failures = json.loads(sys.argv[1]), {}, {}

def reap():
    pid, status = os.wait()
    module, fd = running.pop(pid)
    with os.fdopen(fd) as fh:
        err = fh.read()
    if status:
        failures[module] = err or f"exit status {status}"

for module in modules:
    while len(running) >= 2:
        reap()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            importlib.import_module(module)
            code = 0
        except BaseException:
            os.write(w, traceback.format_exc()[-2000:].encode())
            code = 1
        os._exit(code)
    os.close(w)
    running[pid] = (module, r)
while running:
    reap()
print(json.dumps(failures))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_every_module_imports_alone_in_a_fresh_interpreter():
    modules = [m for m in module_files() if not m.endswith("__main__")]
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _FORK_IMPORTER, json.dumps(modules)], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    failures = json.loads(proc.stdout.strip().splitlines()[-1])
    detail = [f"{m}: {err.strip().splitlines()[-1]}" for m, err in failures.items()]
    assert not failures, "modules failing to import on their own:\n" + "\n".join(detail)


def test_fork_importer_reports_a_broken_module(tmp_path):
    (tmp_path / "broken_mod.py").write_text("import no_such_package_xyz\n")
    (tmp_path / "fine_mod.py").write_text("X = 1\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-c", _FORK_IMPORTER, json.dumps(["fine_mod", "broken_mod"]), "[]"],
        capture_output=True,
        text=True,
        env=env,
    )
    failures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert list(failures) == ["broken_mod"] and "no_such_package_xyz" in failures["broken_mod"]


def test_import_faceparse_is_light():
    code = (
        "import json, sys, faceparse\n"
        "api = [faceparse.build_model, faceparse.list_models, faceparse.MODELS, faceparse.model_info]\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))\n"
    )
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_listing_imports_no_training_stack():
    code = (
        "import json, sys, faceparse\n"
        "faceparse.list_models(); faceparse.list_losses(); faceparse.list_datasets()\n"
        "heavy = ('pytorch_lightning', 'lightning', 'albumentations', 'timm', 'segmentation_models_pytorch')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n"
    )
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_lazy_public_names_resolve():
    from faceparse.data import FaceParsingDataModule
    from faceparse.models import FaceParsingModel
    from faceparse.tasks import SegmentationTask

    assert faceparse.FaceParsingModel is FaceParsingModel and faceparse.LabelSet.__name__ == "LabelSet"
    assert SegmentationTask.__name__ == "SegmentationTask" and FaceParsingDataModule.__name__ == "FaceParsingDataModule"
    with pytest.raises(AttributeError, match="no_such_thing"):
        faceparse.no_such_thing  # noqa: B018
    with pytest.raises(ImportError):
        from faceparse.data import NoSuchClass  # noqa: F401


_REGISTRIES = {
    "MODELS": registry.MODEL_MODULES,
    "register_model": registry.MODEL_MODULES,
    "AUX_MODELS": registry.AUX_MODEL_MODULES,
    "LOSSES": registry.LOSS_MODULES,
    "DATASETS": registry.DATASET_MODULES,
}


def _registrations(path: Path) -> set[str]:
    """Registries a module registers into (``@X.register(...)``, ``X.register(...)(f)``, ``@register_model``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Attribute) and f.attr == "register" and isinstance(f.value, ast.Name):
            if f.value.id in _REGISTRIES:
                found.add(f.value.id)
        elif isinstance(f, ast.Name) and f.id == "register_model":
            found.add("register_model")
    return found


def test_registries_name_every_module_that_registers():
    missing = []
    for mod, path in module_files().items():
        if mod == "faceparse.registry":
            continue
        for reg in _registrations(path):
            if mod not in _REGISTRIES[reg]:
                missing.append(f"{mod} registers in {reg} but is not in its module list in faceparse/registry.py")
    assert not missing, "\n".join(missing)
    for modules in _REGISTRIES.values():  # and every listed module exists
        assert all(m in module_files() for m in modules), modules
