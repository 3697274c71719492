"""The package's layers (as ARCHITECTURE.md states them) and a tracer that follows a call through
them, counting how often the code climbs back up a layer. Shared by tests/test_architecture.py
and scripts/trace_loading.py; needs only the standard library."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Lowest first. A module may import modules of lower layers and, without cycles, of its own.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("what things are (no torch, no Pillow)", ("errors", "fsutil", "config", "preprocessing", "options", "record",
                                               "manifest", "specs")),  # fmt: skip
    ("tensors, pixels and files", ("model", "images", "files", "probe")),
    ("conversion", ("layouts", "architecture", "conversion")),
    ("fetch and cache", ("fetch",)),
    ("loading", ("loading",)),
    ("runtime choices", ("runtime",)),
    ("the runner", ("runner",)),
    ("the public API", ("api", "evaluate", "embeddings", "explain", "fitting")),
    ("command line and integrations", ("cli", "serve", "ray", "export")),
]
BOTTOM = set(LAYERS[0][1])
# The one import that points up, lazily: a spec is callable on an image (spec(image)), which runs
# the image module's preprocess_one; the image module itself never imports the spec module.
UPWARD_LAZY = {("preprocessing", "images")}


def rank(module: str) -> int:
    for i, (_, modules) in enumerate(LAYERS):
        if module in modules:
            return i
    raise KeyError(f"module {module!r} is in no layer (tests/layering.py, ARCHITECTURE.md)")


def trace_climbs(
    run: Callable[[], Any], window: tuple[str, str], ranks: Callable[[str], int] = rank, src: str | None = None
) -> tuple[Any, list[str], int]:
    """Run ``run()`` and follow where the code executes while the function ``window`` = (module,
    name) is on the stack: the sequence of tinyvit modules (calls and returns), the torch-free data
    layer left out (building records and configs is data, not control flow), repeats collapsed.
    A climb is a move to a higher layer. Returns (the result, the sequence, the climbs)."""
    src = src or str(Path(__import__("tinyvit").__file__).parent) + "/"
    seq: list[str] = []
    stack: list[tuple[str | None, str]] = []
    depth = [0]  # frames of the window function on the stack

    def module_of(frame) -> str | None:
        f = frame.f_code.co_filename
        return Path(f).stem if f.startswith(src) else None

    def here() -> str | None:
        return next((m for m, _ in reversed(stack) if m is not None), None)

    def profile(frame, event, arg):
        if event not in ("call", "return"):
            return
        mod = module_of(frame)
        if event == "call":
            stack.append((mod, frame.f_code.co_name))
            if (mod, frame.f_code.co_name) == window:
                depth[0] += 1
        else:
            if stack:
                top = stack.pop()
                if top == window:
                    depth[0] -= 1
        where = here()
        if depth[0] > 0 and where is not None and ranks(where) > 0 and (not seq or seq[-1] != where):
            seq.append(where)

    sys.setprofile(profile)
    try:
        out = run()
    finally:
        sys.setprofile(None)
    climbs = sum(1 for a, b in zip(seq, seq[1:], strict=False) if ranks(b) > ranks(a))
    return out, seq, climbs
