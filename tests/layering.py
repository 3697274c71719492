"""The package's layers, as the tree shows them (ARCHITECTURE.md), and a tracer that follows a call
through them, counting how often the code climbs back up a layer. Shared by
tests/test_architecture.py and scripts/trace_loading.py; needs only the standard library.

A module's layer is its subpackage's (``tinyvit/weights/convert.py`` → ``weights``), or, for a
module at the package root, its own name (``api``); the list below orders those names, lowest
first. Modules are found in the tree, not listed here.
"""

from __future__ import annotations

import ast
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

SRC = Path(__file__).resolve().parents[1] / "src" / "tinyvit"

# Lowest first; names on one line share a layer. A module may import modules of its own and lower
# layers, lazily or not, and the imports between modules make no cycle.
LAYERS: list[tuple[str, ...]] = [
    ("core",),  # what things are: errors, file helpers, configs (no torch, Pillow or numpy)
    ("models", "images", "text"),  # the networks (torch); images in, tensors out; text in, token ids out
    ("weights",),  # records, the zoo, specs; checkpoint files, key maps, conversion, fetching, building
    ("run",),  # options, devices, the runner and what is built on it
    ("api",),  # the public functions
    ("deploy",),  # the command line, serving, Ray, ONNX
    ("ray", "serve", "export", "__main__"),  # the documented import paths of deploy's modules; python -m tinyvit
]
DATA = ("core", "images.spec", "weights.record", "weights.manifest", "weights.specs", "run.options")  # plain data
TORCH_FREE = ("core", "images.spec", "images.inputs", "weights.record", "weights.manifest", "weights.specs",
              "run.options", "deploy.cli")  # fmt: skip  importing them imports no torch


def modules() -> list[str]:
    """Every module of the package, dotted below ``tinyvit`` (``weights.convert``, ``api``), the
    packages' ``__init__`` files and the root's left out."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).with_suffix("")
        if rel.name == "__init__":
            continue
        found.append(".".join(rel.parts))
    return found


def layer_of(module: str) -> str:
    """The layer name of a dotted module: its subpackage, or a root module's own name."""
    return module.split(".", 1)[0]


def rank(module: str) -> int:
    name = layer_of(module)
    for i, names in enumerate(LAYERS):
        if name in names:
            return i
    raise KeyError(f"{module!r}: {name!r} is in no layer (tests/layering.py, ARCHITECTURE.md)")


def source(module: str) -> str:
    return SRC.joinpath(*module.split(".")).with_suffix(".py").read_text(encoding="utf-8")


def imports(module: str) -> list[tuple[str, bool]]:
    """(imported tinyvit module, dotted below tinyvit; lazily?) for every import that runs:
    typing-only imports and the ``if __name__ == "__main__":`` entry point are left out; the package
    root (``__version__``) too. ``from tinyvit.x import y`` names the module ``x.y`` when that is a
    module, else ``x``."""
    known = set(modules())
    tree = ast.parse(source(module))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and any(s in ast.unparse(node.test) for s in ("TYPE_CHECKING", "__main__")):
            skipped.update(id(n) for n in ast.walk(node))
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if id(node) in skipped or not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            base = node.module or ""
            names = [f"{base}.{a.name}" if f"{base}.{a.name}".removeprefix("tinyvit.") in known else base
                     for a in node.names]  # fmt: skip
        out += [(n.removeprefix("tinyvit."), id(node) not in top) for n in names if n.startswith("tinyvit.")]
    return out


@functools.cache
def import_graph() -> dict[str, frozenset[str]]:
    """Module → the modules of the package it imports (lazily or not)."""
    known = set(modules())
    return {m: frozenset(t for t, _ in imports(m) if t in known) for m in known}


def fine_rank(module: str) -> tuple[int, int]:
    """(layer, depth within its package): a module's depth is one more than the deepest module of
    its own package that it imports. Within a package the modules then order themselves as their
    imports do — no list to keep."""
    graph = import_graph()

    def depth(m: str, seen: frozenset = frozenset()) -> int:
        same = [t for t in graph.get(m, ()) if layer_of(t) == layer_of(m) and t not in seen]
        return 1 + max((depth(t, seen | {m}) for t in same), default=-1)

    return rank(module), depth(module)


def trace_climbs(
    run: Callable[[], Any], window: tuple[str, str], ranks: Callable[[str], Any] = fine_rank, src: str | None = None
) -> tuple[Any, list[str], int]:
    """Run ``run()`` and follow where the code executes while the function ``window`` = (dotted
    module, name) is on the stack: the sequence of tinyvit modules (calls and returns), the plain
    data modules left out (building records and configs is data, not control flow), repeats
    collapsed. A climb is a call from a module into one of a higher rank (``ranks``: by default the
    layer, then the depth within the package): code that calls back up the layers. Returning to a
    caller is not one. Returns (the result, the sequence, the climbs)."""
    src = src or str(Path(__import__("tinyvit").__file__).parent) + "/"
    seq: list[str] = []
    stack: list[tuple[str | None, str]] = []
    depth = [0]  # frames of the window function on the stack
    climbs = [0]

    def module_of(frame) -> str | None:
        f = frame.f_code.co_filename
        if not f.startswith(src):
            return None
        module = ".".join(Path(f[len(src) :]).with_suffix("").parts)
        return None if module.startswith(DATA) else module

    def here() -> str | None:
        return next((m for m, _ in reversed(stack) if m is not None), None)

    def profile(frame, event, arg):
        if event not in ("call", "return"):
            return
        mod = module_of(frame)
        if event == "call":
            caller = here()
            if depth[0] > 0 and mod is not None and caller is not None and ranks(mod) > ranks(caller):
                climbs[0] += 1
            stack.append((mod, frame.f_code.co_name))
            if (mod, frame.f_code.co_name) == window:
                depth[0] += 1
        elif stack:
            if stack.pop() == window:
                depth[0] -= 1
        where = here()
        if depth[0] > 0 and where is not None and (not seq or seq[-1] != where):
            seq.append(where)

    sys.setprofile(profile)
    try:
        out = run()
    finally:
        sys.setprofile(None)
    return out, seq, climbs[0]
