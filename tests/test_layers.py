"""The house's layering (README, "Where things live"): a module imports only its own unit and the
layers beneath it. Checked over every import statement in dora/, those inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import dora

ROOT = Path(dora.__file__).parent

# Lowest first, folder by folder. A unit is a folder (or the ground floor: dora's own modules);
# units in one layer may not import each other. Inside a unit anything goes but a circle
# (test_no_import_circle).
GROUND = "dora:ground"
LAYERS: list[tuple[str, ...]] = [
    (GROUND,),  # dora/*.py: errors, files, lock, progress, checks
    ("dora.cache",),
    ("dora.pipeline.models", "dora.pipeline.tasks", "dora.pipeline.costs"),
    ("dora.pipeline.data",),
    ("dora.pipeline.kd", "dora.pipeline.engines"),
    ("dora.pipeline.train",),
    ("dora.pipeline.stages", "dora.pipeline"),  # dora.pipeline: its __init__ (a docstring)
    ("dora.cli",),
    ("dora.__main__",),
]
TOP = {"dora.cli", "dora.__main__"}


def unit_of(module: str) -> tuple[int, str]:
    """(layer, unit) of a dora module: the longest unit name it falls under."""
    if module == "dora" or module.count(".") == 1 and not any(module in units for units in LAYERS):
        return 0, GROUND  # a module directly in dora/
    best: tuple[int, str] | None = None
    for layer, units in enumerate(LAYERS):
        for unit in units:
            if (module == unit or module.startswith(unit + ".")) and (best is None or len(unit) > len(best[1])):
                best = (layer, unit)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS (and to README's map)")
    return best


def modules(root: Path = ROOT) -> list[tuple[str, Path]]:
    found = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found.append((name, path))
    return found


def dora_imports(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, module) of every dora import in ``path``, relative ones resolved."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "dora"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            if base.split(".")[0] != "dora":
                continue
            if base in ("dora", "dora.pipeline"):  # `from dora.pipeline import x`: x is a module, or __version__
                out += [(node.lineno, f"{base}.{a.name}" if a.name != "__version__" else base) for a in node.names]
            else:
                out.append((node.lineno, base))
    return out


def violations(root: Path = ROOT) -> list[str]:
    found = []
    for module, path in modules(root):
        if module == "dora":
            continue  # the package itself: its version only
        layer, unit = unit_of(module)
        for line, target in dora_imports(path, module):
            if target == "dora":
                continue  # `from dora import __version__`
            t_layer, t_unit = unit_of(target)
            if t_unit == unit or t_layer < layer:
                continue
            found.append(f"{path.relative_to(root.parent)}:{line}: {unit} (layer {layer}) imports {target} "
                         f"(layer {t_layer})")
    return found


def test_no_module_imports_its_layer_or_above():
    assert violations() == []


def test_every_module_has_a_layer():
    for module, _ in modules():
        if module != "dora":
            unit_of(module)


@pytest.mark.parametrize(("importer", "imported", "expected"), [
    ("dora.cache.writer", "dora.pipeline.kd.losses", False),  # cache/ never imports pipeline/
    ("dora.pipeline.kd.distill", "dora.pipeline.engines.generation", False),  # siblings
    ("dora.pipeline.train.loop", "dora.pipeline.stages.train_student", False),  # a lower layer importing a stage
    ("dora.pipeline.stages.train_student", "dora.pipeline.kd.losses", True),
    ("dora.pipeline.stages.demo.tiny", "dora.pipeline.stages.teacher_label", True),  # stage modules are one unit
    ("dora.pipeline.kd.align", "dora.pipeline.kd.losses", True),  # within a package
])
def test_the_rule_itself(importer, imported, expected):
    (a_layer, a_unit), (b_layer, b_unit) = unit_of(importer), unit_of(imported)
    assert (b_unit == a_unit or b_layer < a_layer) is expected


def fake_cache_package(tmp_path: Path, files: dict[str, str]) -> Path:
    """A throwaway ``dora`` package whose ``cache/`` holds ``files`` (name -> source)."""
    fake = tmp_path / "dora"
    (fake / "cache").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "cache" / "__init__.py").write_text("")
    for name, source in files.items():
        (fake / "cache" / name).write_text(source)
    return fake


def test_a_crafted_violation_is_found(tmp_path):
    """The checker reads real files: a lower module importing a stage, even inside a function, is
    reported with its file and line; so is a relative import that climbs into pipeline/."""
    fake = fake_cache_package(tmp_path, {
        "bad.py": "import json\n\ndef f():\n    from dora.pipeline.stages.train_student import x\n",
        "sly.py": "from ..pipeline.train import loop\n"})
    assert violations(fake) == [
        "dora/cache/bad.py:4: dora.cache (layer 1) imports dora.pipeline.stages.train_student (layer 6)",
        "dora/cache/sly.py:1: dora.cache (layer 1) imports dora.pipeline.train (layer 5)",
    ]


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the dora modules it imports (a name imported from a package that is a module of
    its own counts as that module), every import statement included, those inside functions too."""
    known = {name for name, _ in modules(root)}
    graph: dict[str, set[str]] = {}
    for module, path in modules(root):
        targets = graph.setdefault(module, set())
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name in known)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parent + ([base] if base else []))
                for a in node.names:
                    if f"{base}.{a.name}" in known:
                        targets.add(f"{base}.{a.name}")
                    elif base in known:
                        targets.add(base)
        targets.discard(module)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_no_import_circle():
    assert circles(import_graph()) == []


def test_a_crafted_circle_is_found(tmp_path):
    """Two modules importing each other, one of them inside a function, are a circle."""
    fake = fake_cache_package(tmp_path, {"a.py": "from dora.cache.b import x\n",
                                         "b.py": "def f():\n    from dora.cache import a\n",
                                         "c.py": "from dora.cache import a\n"})
    assert circles(import_graph(fake)) == [["dora.cache.a", "dora.cache.b"]]


def test_the_pipeline_root_holds_only_folders():
    """Stages live in stages/, the library in its packages: no flat module beside them."""
    flat = sorted(p.name for p in (ROOT / "pipeline").glob("*.py") if p.name != "__init__.py")
    assert flat == []
