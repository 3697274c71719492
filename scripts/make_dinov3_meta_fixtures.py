"""Generate tests/fixtures/dinov3_meta.{json,safetensors} (issue #26): Meta's own DINOv3 checkpoints.

The ``.pth`` files facebookresearch/dinov3 publishes (``dinov3_vits16_pretrain_lvd1689m-08c60483.pth``,
…) are ``torch.save`` of its ``DinoVisionTransformer``'s state dict. This script builds that model
from the repository's own code — its python package copied out of a git directory into a temporary
folder at run time, never into this repository — with the options ``dinov3/hub/backbones.py`` gives
every released ViT (patch 16, rotary base 100 with ``"separate"`` coordinates in float32, LayerNorm
``layernormbf16`` (eps 1e-5), LayerScale, the key bias masked by ``qkv.bias_mask``), made small:

- ``meta_splus``: like vits16plus / vith16plus — SwiGLU, 4 storage tokens, and the training-only
  ``local_cls_norm`` of vitl16-sat493m / vit7b16 (``untie_global_and_local_cls_norm``);
- ``meta_base``: like vits16 / vitb16 / vitl16 — GELU MLP, 4 storage tokens, masked key bias;
- ``meta_7b``: like vit7b16 — no qkv bias, SwiGLU aligned to 64, plus what the class offers beyond
  the releases: no storage tokens, RMSNorm.

Weights: ``tests/refdata.py`` ``fill(name, shape)`` under Meta's names, except the LayerScale gains,
``1 + 10 * fill`` (0.5 to 1.5: every block's branches count), the qkv biases, ``25 * fill`` (±0.5:
the key third, which the mask zeroes, would show if a loader kept it), and the buffers, which keep the values
the model's own ``init_weights`` gives them (``rope_embed.periods``, ``qkv.bias_mask``: stored in the
fixture). The state dict is saved with ``torch.save`` and loaded back the way the hub code loads it
(``load_state_dict(strict=True)``) before the outputs are taken: ``forward_features``'
``x_norm_clstoken``, ``x_storage_tokens`` and ``x_norm_patchtokens`` at the released 224 px and at
160x208. The four photos of tests/fixtures/photos go through the repository's evaluation transform
(``dinov3.data.transforms.make_classification_eval_transform``: short edge 256, bicubic, centre crop
224, ImageNet mean / std, on torchvision's uint8 tensors) into ``meta_splus``.

    .refs/bin/python scripts/make_dinov3_meta_fixtures.py [--dinov3-git /work/.mirror/facebookresearch+dinov3/repo]

(``fetch github:facebookresearch/dinov3`` gives that git directory; a clone works too.)
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from make_family_fixtures import OUT, PHOTO_NAMES, check_output, key_table, open_rgb, to_pixels  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import refdata  # noqa: E402

DEFAULT_GIT = "/work/.mirror/facebookresearch+dinov3/repo"
# What dinov3/hub/backbones.py passes for every released ViT (its _make_dinov3_vit and dinov3_vit*16*)
RELEASED = dict(
    img_size=224, patch_size=16, pos_embed_rope_base=100, pos_embed_rope_normalize_coords="separate",
    pos_embed_rope_rescale_coords=2, pos_embed_rope_dtype="fp32", qkv_bias=True, layerscale_init=1.0e-05,
    norm_layer="layernormbf16", ffn_bias=True, proj_bias=True, mask_k_bias=True, drop_path_rate=0.0,
)  # fmt: skip
CASES = {
    "meta_splus": (
        dict(embed_dim=96, depth=3, num_heads=4, ffn_ratio=6, ffn_layer="swiglu", n_storage_tokens=4,
             untie_global_and_local_cls_norm=True),
        "dinov3_vits16plus_pretrain_lvd1689m-00000000.pth",
        "SwiGLU (w1 gate, w2 value, w3 out; hidden int(6 D * 2/3) aligned to 8), 4 storage tokens, masked key bias, "
        "LayerScale, local_cls_norm (training only), head dim 24 (6 rotary periods)",
    ),
    "meta_base": (
        dict(embed_dim=64, depth=2, num_heads=2, ffn_ratio=4, ffn_layer="mlp", n_storage_tokens=4),
        "dinov3_vitb16_pretrain_lvd1689m-00000000.pth",
        "GELU MLP (fc1, fc2), 4 storage tokens, masked key bias, LayerScale, head dim 32 (8 rotary periods)",
    ),
    "meta_7b": (
        dict(embed_dim=64, depth=2, num_heads=4, ffn_ratio=2.5, ffn_layer="swiglu64", n_storage_tokens=0,
             qkv_bias=False, norm_layer="rmsnorm", untie_global_and_local_cls_norm=True),
        "dinov3_vit7b16_pretrain_lvd1689m-00000000.pth",
        "no qkv bias (no bias_mask), SwiGLU hidden aligned to 64 (int(2.5 D * 2/3) = 106 -> 128), no storage "
        "tokens, RMSNorm (eps 1e-5), local_cls_norm, head dim 16 (4 rotary periods)",
    ),
}  # fmt: skip
SIZES = [(2, 3, 224, 224), (2, 3, 160, 208)]  # the released size (14x14 grid), and a 10x13 grid
OUTPUTS = ("x_norm_clstoken", "x_storage_tokens", "x_norm_patchtokens")


def meta_weight(name: str, shape) -> np.ndarray:
    """The fixture's weight for a parameter (tests/test_dinov3_meta.py has the same function)."""
    w = refdata.fill(name, shape)
    if name.endswith((".ls1.gamma", ".ls2.gamma")):
        return (1 + 10 * w).astype(np.float32)
    if name.endswith(".attn.qkv.bias"):  # within ±0.5: the key third (masked out) would show if it were kept
        return (25 * w).astype(np.float32)
    return w


def is_buffer(name: str) -> bool:
    return name.endswith(("rope_embed.periods", ".bias_mask"))


def dinov3_package(git_dir: str, dst: Path) -> str:
    """The repository's ``dinov3`` python package, written into ``dst``; returns the commit."""
    commit = subprocess.run(["git", "--git-dir", git_dir, "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()  # fmt: skip
    names = subprocess.run(["git", "--git-dir", git_dir, "ls-tree", "-r", "--name-only", commit, "dinov3"],
                           capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    for name in names:
        if name.endswith(".py"):
            text = subprocess.run(["git", "--git-dir", git_dir, "show", f"{commit}:{name}"], capture_output=True,
                                  check=True).stdout  # fmt: skip
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            (dst / name).write_bytes(text)
    return commit


def eval_transform_module(src: Path):
    """dinov3/data/transforms.py alone (the package's data/__init__ imports its datasets)."""
    spec = importlib.util.spec_from_file_location("dinov3_eval_transforms", src / "dinov3" / "data" / "transforms.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(name: str, tmp: Path) -> tuple[torch.nn.Module, dict, dict]:
    """The case's model with the fixture's weights, saved as Meta's .pth and loaded back as the hub
    code loads it; also its key table and buffer values."""
    from dinov3.models.vision_transformer import DinoVisionTransformer

    kwargs, file_name, _ = CASES[name]
    model = DinoVisionTransformer(**{**RELEASED, **kwargs})
    model.init_weights()
    state = model.state_dict()
    keys = key_table(state)
    filled = {k: v.clone() if is_buffer(k) else torch.from_numpy(meta_weight(k, v.shape)) for k, v in state.items()}
    path = tmp / file_name
    torch.save(filled, path)
    loaded = DinoVisionTransformer(**{**RELEASED, **kwargs})
    loaded.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    buffers = {k: v.tolist() for k, v in state.items() if is_buffer(k)}
    return loaded.eval(), keys, buffers


def features(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        out = model.forward_features(x)
    return {k: out[k] for k in OUTPUTS}


def sensitivity(model: torch.nn.Module, x: torch.Tensor, want: dict[str, torch.Tensor]) -> dict[str, float]:
    """How far the outputs move when the key bias is left unmasked (bias_mask all ones): what a
    loader that dropped the mask without applying it would give."""
    masks = [m for n, m in model.named_buffers() if n.endswith("bias_mask")]
    if not masks:
        return {}
    saved = [m.clone() for m in masks]
    for m in masks:
        m.fill_(1.0)
    got = features(model, x)
    for m, s in zip(masks, saved, strict=True):
        m.copy_(s)
    return {"key_bias_unmasked": max((got[k] - want[k]).abs().max().item() for k in OUTPUTS if want[k].numel())}


def case_entry(name: str, tmp: Path, tensors: dict) -> tuple[dict, torch.nn.Module]:
    kwargs, file_name, covers = CASES[name]
    model, keys, buffers = build(name, tmp)
    entry = {"constructor_kwargs": {**RELEASED, **kwargs}, "file_name": file_name, "covers": covers,
             "keys": keys, "buffers": buffers, "inputs": [], "outputs": {}}  # fmt: skip
    for i, shape in enumerate(SIZES):
        spec = {"name": f"dinov3_meta/{name}/{i}", "shape": list(shape)}
        entry["inputs"].append(spec)
        x = torch.from_numpy(refdata.make_input(spec["name"], spec["shape"]))
        out = features(model, x)
        for k, v in out.items():
            key = f"{name}/{k}@{i}"
            v = v.detach().float().contiguous().clone()
            if v.numel():
                check_output(key, v)
            tensors[key] = v
            entry["outputs"][f"{k}@{i}"] = {"input": i, "shape": list(v.shape), "safetensors_key": key,
                                            "call": f"model.forward_features(x)[{k!r}]"}  # fmt: skip
        if i == 0:
            entry["sensitivity"] = sensitivity(model, x, out)
    print(f"  {name}: {len(keys)} keys, sensitivity {entry['sensitivity']}", flush=True)
    return entry, model


def photos(model: torch.nn.Module, src: Path, tensors: dict) -> dict:
    """The photos through the repository's evaluation transform, into the model: the 8-bit pixels'
    hashes (their normalization gives the tensor back to 1e-6) and the class tokens."""
    transforms = eval_transform_module(src)
    transform = transforms.make_classification_eval_transform()
    mean, std = transforms.IMAGENET_DEFAULT_MEAN, transforms.IMAGENET_DEFAULT_STD
    xs, pixels = [], {}
    for photo in PHOTO_NAMES:
        x = transform(open_rgb(photo))
        arr, err = to_pixels(x, mean, std)
        assert err <= 1e-6, (photo, err)
        pixels[photo] = {"shape": list(x.shape), "sha256": hashlib.sha256(arr.tobytes()).hexdigest()}
        xs.append(x)
    y = features(model, torch.stack(xs))["x_norm_clstoken"].contiguous().clone()
    tensors["meta_splus/photos"] = y
    return {"case": "meta_splus", "transform": "dinov3.data.transforms.make_classification_eval_transform()",
            "resize_size": transforms.RESIZE_DEFAULT_SIZE, "crop_size": transforms.CROP_DEFAULT_SIZE,
            "mean": list(mean), "std": list(std), "order": PHOTO_NAMES, "pixels": pixels,
            "output": {"safetensors_key": "meta_splus/photos", "shape": list(y.shape),
                       "call": "model.forward_features(x)['x_norm_clstoken']"}}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dinov3-git", default=DEFAULT_GIT, help="a git directory of facebookresearch/dinov3")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import torchvision

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        commit = dinov3_package(args.dinov3_git, src)
        sys.path.insert(0, str(src))
        tensors: dict[str, torch.Tensor] = {}
        cases, models = {}, {}
        for name in CASES:
            cases[name], models[name] = case_entry(name, Path(tmp), tensors)
        photo = photos(models["meta_splus"], src, tensors)
    fixture = {
        "generated_by": "scripts/make_dinov3_meta_fixtures.py",
        "dinov3": f"facebookresearch/dinov3@{commit}",
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__},
        "weights": "refdata.fill(name, shape) under the keys, except *.ls1.gamma / *.ls2.gamma: 1 + 10 * fill, "
        "*.attn.qkv.bias: 25 * fill; "
        "buffers (rope_embed.periods, *.bias_mask): the values stored here",
        "cases": cases,
        "photos": photo,
    }
    (OUT / "dinov3_meta.json").write_text(json.dumps(fixture, indent=1) + "\n")
    save_file(tensors, str(OUT / "dinov3_meta.safetensors"))
    size = sum(v.numel() * 4 for v in tensors.values())
    print(f"wrote {OUT / 'dinov3_meta.json'} and .safetensors ({size / 1e6:.2f} MB of outputs), dinov3 {commit}")


if __name__ == "__main__":
    main()
