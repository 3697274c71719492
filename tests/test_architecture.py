"""The house rules of ARCHITECTURE.md, checked: layers that point down, a model file that stands
alone, one forward pass, one place that scores, short functions, and loading that reads top-down."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_parity, write_checkpoint
from hubserver import HubServer
from layering import LAYERS, UPWARD_LAZY, rank, trace_climbs
from test_hub import run_py, weights_bytes

import tinyvit.run.runtime as runtime
from tinyvit.weights.manifest import resolve

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "tinyvit"
MODULES = sorted(p.stem for p in SRC.glob("*.py") if p.stem != "__init__")
META, _ = load_parity()


def source(module: str) -> str:
    return (SRC / f"{module}.py").read_text(encoding="utf-8")


def imports(module: str) -> list[tuple[str, bool]]:
    """(imported tinyvit module, lazily?) for every import that runs: typing-only imports and the
    ``if __name__ == "__main__":`` entry point are left out; the package root (``__version__``) too."""
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
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        for name in names:
            if name.startswith("tinyvit."):
                out.append((name.split(".")[1], id(node) not in top))
    return out


def test_every_module_has_a_layer_and_a_paragraph_in_architecture_md():
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    placed = [m for _, modules in LAYERS for m in modules]
    assert sorted(placed) == MODULES and len(set(placed)) == len(placed)
    for m in MODULES:
        assert re.search(rf"^\*\*`{m}\.py`\*\*", text, re.M), f"ARCHITECTURE.md has no paragraph on {m}.py"


def test_imports_point_down_and_make_no_cycle():
    graph = {m: {i for i, _ in imports(m)} for m in MODULES}
    for m in MODULES:
        for target, lazy in imports(m):
            if rank(target) > rank(m):
                assert lazy and (m, target) in UPWARD_LAZY, f"{m}.py imports {target}, a higher layer"
    seen: dict[str, int] = {}  # depth-first search for a cycle: 1 on the path, 2 done

    def visit(m: str, path: list[str]) -> None:
        seen[m] = 1
        for t in graph[m]:
            assert seen.get(t) != 1, f"import cycle: {' -> '.join([*path, m, t])}"
            if t not in seen:
                visit(t, [*path, m])
        seen[m] = 2

    for m in MODULES:
        if m not in seen:
            visit(m, [])


def test_the_model_file_needs_only_torch():
    code = (
        "import sys\n"
        "for name in ('PIL', 'numpy', 'safetensors', 'huggingface_hub'):\n"
        "    sys.modules[name] = None  # blocked: importing it raises ImportError\n"
        "import torch\n"
        "from tinyvit.models.vit import VisionTransformer, ViTConfig\n"
        "m = VisionTransformer(ViTConfig(image_size=32, patch_size=8, embed_dim=64, depth=1, num_heads=4))\n"
        "print(tuple(m.init_weights().eval()(torch.zeros(1, 3, 40, 24)).shape))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "(1, 1000)"
    blocked = "import sys\nsys.modules['PIL'] = None\nimport tinyvit.weights.manifest, tinyvit.preprocessing, tinyvit.specs\n"
    assert subprocess.run([sys.executable, "-c", blocked], capture_output=True, timeout=60).returncode == 0


def test_one_forward_and_one_place_that_scores():
    text = source("export")
    for internal in (".blocks", "pos_embed", "patch_embed"):
        assert internal not in text, f"export.py reaches into the model ({internal})"
    for module in ("serve", "ray", "explain"):
        scoring = re.findall(r"softmax|\.topk\(|argmax|argsort|\.sort\(", source(module))
        assert not scoring, f"{module}.py scores by itself: {scoring}"


def test_no_function_is_longer_than_60_lines():
    long = []
    for m in MODULES + ["__init__"]:
        for node in ast.walk(ast.parse(source(m))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long.append(f"{m}.py:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long


# ---------------------------------------------------------------------------------------------
# Loading reads top-down: spec -> source -> tensors + record -> model


def loading_trace(spec: str) -> tuple[list[str], int]:
    runtime.clear_model_cache()
    _, seq, climbs = trace_climbs(lambda: runtime.model_for(spec), ("loading", "load_model"))
    runtime.clear_model_cache()
    return seq, climbs


def test_loading_a_local_checkpoint_climbs_back_at_most_4_times(weights, tmp_path):
    hf_folder = write_checkpoint("hf_small", META["cases"]["hf_small"], tmp_path / "hf")
    raw_timm = weights.parent / "src" / "timm_b32_384.safetensors"  # what the weights fixture converted
    for spec in (weights, raw_timm, hf_folder):
        seq, climbs = loading_trace(str(spec))
        assert seq[0] == "loading" and seq[-1] == "loading" and "model" in seq, seq
        assert climbs <= 4, (spec, seq)


TRACE_HUB = """
    import json, sys
    from layering import trace_climbs
    import tinyvit.run.runtime as runtime
    out = {{}}
    for spec in {specs!r}:
        _, seq, climbs = trace_climbs(lambda: runtime.model_for(spec), ("loading", "load_model"))
        out[spec] = {{"seq": seq, "climbs": climbs}}
    print(json.dumps(out))
"""


def test_loading_from_the_hub_climbs_back_at_most_4_times(tmp_path):
    hf = META["cases"]["hf_small"]
    with HubServer() as hub:
        hub.add_file(resolve("vit-base-p32-384").source.repo_id, "model.safetensors", weights_bytes("timm_b32_384"))
        hub.add_file("acme/small", "model.safetensors", weights_bytes("hf_small"))
        hub.add_file("acme/small", "config.json", json.dumps(hf["hf_config"]).encode())
        specs = ["vit-base-p32-384", "hf-hub:acme/small"]
        traces = run_py(TRACE_HUB.format(specs=specs), tmp_path, hub.url)
    for spec in specs:
        assert traces[spec]["seq"][:2] == ["loading", "fetch"], traces[spec]
        assert traces[spec]["climbs"] <= 4, traces[spec]


@pytest.mark.parametrize("module", ["runner", "loading", "fetch"])
def test_internal_modules_do_not_import_the_public_surface(module):
    assert "api" not in {t for t, _ in imports(module)}
