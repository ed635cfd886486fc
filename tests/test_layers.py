"""The house's layering (README, "Where things live"): a module imports only its own unit and the
layers beneath it. Checked over every import statement in dora/, those inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import dora

ROOT = Path(dora.__file__).parent

# Lowest first. A unit is a module or a package; units in one layer may not import each other
# (except the stage modules, which are one unit: the demo runs the teacher, student and report).
LAYERS: list[tuple[str, ...]] = [
    ("dora.errors",),
    ("dora.files",),
    ("dora.cache",),
    ("dora.pipeline.progress", "dora.pipeline.checks"),
    ("dora.pipeline.models", "dora.pipeline.tasks", "dora.pipeline.costs"),
    ("dora.pipeline.data",),
    ("dora.pipeline.kd", "dora.pipeline.train", "dora.pipeline.engines"),
    ("dora.pipeline",),  # the stage modules: config, teacher, finetune, student, evaluate, demo, report, budget
    ("dora.cli",),
    ("dora.__main__",),
]


def unit_of(module: str) -> tuple[int, str]:
    """(layer, unit) of a dora module: the longest unit name it falls under."""
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
    ("dora.pipeline.train.loop", "dora.pipeline.student", False),  # a lower layer importing a stage
    ("dora.pipeline.student", "dora.pipeline.kd.losses", True),
    ("dora.pipeline.demo", "dora.pipeline.teacher", True),  # stage modules are one unit
    ("dora.pipeline.kd.align", "dora.pipeline.kd.losses", True),  # within a package
])
def test_the_rule_itself(importer, imported, expected):
    (a_layer, a_unit), (b_layer, b_unit) = unit_of(importer), unit_of(imported)
    assert (b_unit == a_unit or b_layer < a_layer) is expected


def test_a_crafted_violation_is_found(tmp_path):
    """The checker reads real files: a lower module importing a stage, even inside a function, is
    reported with its file and line; so is a relative import that climbs into pipeline/."""
    fake = tmp_path / "dora"
    (fake / "cache").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "cache" / "__init__.py").write_text("")
    (fake / "cache" / "bad.py").write_text("import json\n\ndef f():\n    from dora.pipeline.student import x\n")
    (fake / "cache" / "sly.py").write_text("from ..pipeline.train import loop\n")
    assert violations(fake) == [
        "dora/cache/bad.py:4: dora.cache (layer 2) imports dora.pipeline.student (layer 7)",
        "dora/cache/sly.py:1: dora.cache (layer 2) imports dora.pipeline.train (layer 6)",
    ]
