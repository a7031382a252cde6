"""The package is layered (README, "Development"): each layer imports only the layers before it,
and nothing imports the CLI. Checked on the source, so a new import that breaks it fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "deltapatch"
LAYERS = [  # lowest first; a module may import its own layer and those before it
    {"errors", "registry", "options", "progress", "preprocess", "weights", "metrics", "hardware",
     "paths", "tensorfile", "store", "devices", "version", "skips"},
    {"backbones"},
    {"baseinit", "delta", "patch", "routing", "execution", "model"},
    {"data", "batches", "distributed", "train", "cache"},
    {"methods"},
    {"runinputs", "runfolder", "run"},
    {"bench", "demo", "demo_config", "demo_report", "export", "serve", "dense"},
    {"cli", "__main__", "__init__"},
]


def _layer(top: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if top in names)


def _imports(file: Path) -> set[str]:
    """Top-level deltapatch modules that ``file`` imports (absolute or relative)."""
    rel = file.relative_to(PKG).with_suffix("")
    depth = len(rel.parts) - 1  # package depth of the file
    found = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if node.module and node.module.startswith("deltapatch."):
                    found.add(node.module.split(".")[1])
                continue
            base = list(rel.parts[:depth])[: max(0, depth - (node.level - 1))]
            parts = base + (node.module.split(".") if node.module else [])
            if parts:
                found.add(parts[0])
            else:
                found.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names
                         if a.name.startswith("deltapatch."))
    return {n for n in found if (PKG / n).is_dir() or (PKG / f"{n}.py").is_file()}


SOURCES = sorted(p for p in PKG.rglob("*.py"))


@pytest.mark.parametrize("file", SOURCES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_follow_the_layers(file):
    top = file.relative_to(PKG).parts[0].removesuffix(".py")
    if top == "__init__":
        return  # the package's face re-exports from the layers below
    own = _layer(top)
    for name in _imports(file) - {top}:
        assert _layer(name) <= own, f"{file.relative_to(PKG)} ({LAYERS[own]}) imports {name}"


def test_nothing_imports_the_cli():
    for file in SOURCES:
        if file.relative_to(PKG).parts[0] not in ("cli", "__main__.py"):
            assert "cli" not in _imports(file), file


def _module_graph() -> dict[str, set[str]]:
    """Module → the package's modules it imports, at any depth, lazy imports included."""
    names = {".".join(p.relative_to(PKG).with_suffix("").parts): p for p in SOURCES}
    names = {n.removesuffix(".__init__") if n != "__init__" else "": p for n, p in names.items()}
    graph: dict[str, set[str]] = {}
    for mod, file in names.items():
        pkg = mod if file.name == "__init__.py" else mod.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = pkg.split(".") if pkg else []
                base = base[: len(base) - (node.level - 1)] + (node.module.split(".")
                                                               if node.module else [])
                target = ".".join(base)
                subs = [f"{target}.{a.name}".lstrip(".") for a in node.names]
                subs = [s for s in subs if s in names]
                found.update(subs if len(subs) == len(node.names) else [target, *subs])
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("deltapatch"):
                found.add(node.module.removeprefix("deltapatch").lstrip("."))
        graph[mod] = {m for m in found if m in names and m != mod}
    return graph


def test_no_import_circles():
    """No module reaches itself through imports (lazy ones included), and nothing inside the
    package imports its root: each layer stands on the ones below without reaching back."""
    graph = _module_graph()
    assert not [m for m, deps in graph.items() if "" in deps and m], "imports of the root"
    graph.pop("")

    def reaches(start: str) -> bool:
        seen, todo = set(), list(graph[start])
        while todo:
            m = todo.pop()
            if m == start:
                return True
            if m not in seen:
                seen.add(m)
                todo.extend(graph[m])
        return False

    assert [m for m in graph if reaches(m)] == []


THIRD_PARTY_PRIVATES = {
    # efficientnet_pytorch's blocks expose their parts only as _-attributes (backbones/
    # efficientnet_lite.py walks them); argparse's flag actions, torch's _BatchNorm base class,
    # Starlette's cached request body, and torch's nn.Module._apply through super()
    "_block_args", "_swish", "_bn0", "_bn1", "_bn2", "_expand_conv", "_depthwise_conv",
    "_project_conv", "_blocks", "_StoreTrueAction", "_StoreFalseAction", "_BatchNorm", "_body",
    "_apply",
}


def test_no_module_reads_another_ones_private_names():
    """Every module talks to the others through their public names: no ``from .x import _y``,
    and no ``obj._attr`` except on ``self``/``cls`` (``model._head`` read in ten places was how
    the model's private head became everyone's). Third-party internals we must reach are listed
    above, each with why."""
    found = []
    for file in SOURCES:
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "")
                                                     .startswith("deltapatch")):
                found += [f"{file.name}: import {a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
            elif (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                  and not node.attr.startswith("__") and node.attr not in THIRD_PARTY_PRIVATES
                  and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
                found.append(f"{file.name}:{node.lineno}: {ast.unparse(node)}")
    assert found == []
