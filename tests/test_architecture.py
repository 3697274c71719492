"""The house rules of ARCHITECTURE.md, checked: layers that point down, a model file that stands
alone, one forward pass, one place that scores, short functions, and loading that reads top-down."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

from conftest import load_parity, write_checkpoint
from hubserver import HubServer
from layering import LAYERS, TORCH_FREE, import_graph, imports, layer_of, modules, rank, source, trace_climbs
from test_hub import run_py, weights_bytes

import tinyvit.run.runtime as runtime
from tinyvit.run.options import ModelOptions
from tinyvit.weights.manifest import resolve

ROOT = Path(__file__).resolve().parents[1]
MODULES = modules()
META, _ = load_parity()


def test_the_tree_is_the_layers_and_architecture_md_says_what_each_holds():
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    names = {layer_of(m) for m in MODULES}
    assert names == {n for layer in LAYERS for n in layer} - {"text"} | ({"text"} & names)
    for m in MODULES:
        rank(m)  # every module is in a layer
        shown = m.replace(".", "/") + ".py"
        assert f"`{shown}`" in text, f"ARCHITECTURE.md does not mention {shown}"
    for package in sorted({m.split(".")[0] for m in MODULES if "." in m}):
        assert re.search(rf"^## .*`{package}/`", text, re.M), f"ARCHITECTURE.md has no section on {package}/"


def test_imports_point_down_and_make_no_cycle():
    g = import_graph()
    for m in MODULES:
        for target, lazy in imports(m):
            assert target in MODULES or target.split(".")[0] in {n for layer in LAYERS for n in layer}, target
            assert rank(target) <= rank(m), f"{m} imports {target}, a higher layer" + (" (lazily)" if lazy else "")
    seen: dict[str, int] = {}  # depth-first search for a cycle: 1 on the path, 2 done

    def visit(m: str, path: list[str]) -> None:
        seen[m] = 1
        for t in g[m]:
            assert seen.get(t) != 1, f"import cycle: {' -> '.join([*path, m, t])}"
            if t not in seen:
                visit(t, [*path, m])
        seen[m] = 2

    for m in MODULES:
        if m not in seen:
            visit(m, [])


def test_the_model_file_needs_only_torch_and_the_data_modules_need_no_torch():
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
    data = [m for m in MODULES if m.startswith(TORCH_FREE)]
    blocked = (
        "import sys\nfor name in ('torch', 'PIL'):\n    sys.modules[name] = None\n"
        + "".join(f"import tinyvit.{m}\n" for m in data)
    )
    out = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]


def test_one_forward_and_one_place_that_scores():
    text = source("deploy.export")
    for internal in (".blocks", "pos_embed", "patch_embed"):
        assert internal not in text, f"export.py reaches into the model ({internal})"
    for module in ("deploy.serve", "deploy.ray", "run.explain"):
        scoring = re.findall(r"softmax|\.topk\(|argmax|argsort|\.sort\(", source(module))
        assert not scoring, f"{module} scores by itself: {scoring}"


def test_no_function_is_longer_than_60_lines():
    long = []
    for m in MODULES:
        for node in ast.walk(ast.parse(source(m))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long.append(f"{m}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long


# ---------------------------------------------------------------------------------------------
# Loading goes one way: spec -> source -> tensors + record -> model, no call back up


def loading_trace(spec: str, options: ModelOptions | None = None) -> tuple[list[str], int]:
    runtime.clear_model_cache()
    _, seq, climbs = trace_climbs(lambda: runtime.model_for(spec, options), ("weights._builder", "load_model"))
    runtime.clear_model_cache()
    return seq, climbs


def test_loading_a_local_checkpoint_never_calls_back_up(weights, tmp_path):
    hf_folder = write_checkpoint("hf_small", META["cases"]["hf_small"], tmp_path / "hf")
    raw_timm = weights.parent / "src" / "timm_b32_384.safetensors"  # what the weights fixture converted
    for spec, arch in ((weights, None), (raw_timm, "vit_base_patch32_384"), (hf_folder, None)):
        seq, climbs = loading_trace(str(spec), ModelOptions(arch=arch))
        assert seq[0] == "weights._builder" and seq[-1] == "weights._builder" and "models.vit" in seq, seq
        assert climbs == 0, (spec, seq)


TRACE_HUB = """
    import json, sys
    from layering import trace_climbs
    import tinyvit.run.runtime as runtime
    out = {{}}
    for spec in {specs!r}:
        _, seq, climbs = trace_climbs(lambda: runtime.model_for(spec), ("weights._builder", "load_model"))
        out[spec] = {{"seq": seq, "climbs": climbs}}
    print(json.dumps(out))
"""


def test_loading_from_the_hub_never_calls_back_up(tmp_path):
    hf = META["cases"]["hf_small"]
    with HubServer() as hub:
        hub.add_file(resolve("vit-base-p32-384").source.repo_id, "model.safetensors", weights_bytes("timm_b32_384"))
        hub.add_file("acme/small", "model.safetensors", weights_bytes("hf_small"))
        hub.add_file("acme/small", "config.json", json.dumps(hf["hf_config"]).encode())
        specs = ["vit-base-p32-384", "hf-hub:acme/small"]
        traces = run_py(TRACE_HUB.format(specs=specs), tmp_path, hub.url)
    for spec in specs:
        assert traces[spec]["seq"][:2] == ["weights._builder", "weights._hub"], traces[spec]
        assert traces[spec]["climbs"] == 0, traces[spec]


def test_nothing_below_the_public_api_imports_it():
    for m in MODULES:
        if rank(m) < rank("api"):
            assert "api" not in {t for t, _ in imports(m)}, m
