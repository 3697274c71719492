"""The README's family × layout table: tinyvit against each family's home library, measured.

    .venv/bin/python benchmarks/family_parity.py

Loads every case of tests/fixtures/families.json (checkpoints written as timm, open_clip,
transformers and DINOv2's own code write them, generated weights) and prints, per case, the max
|Δ| of tinyvit's outputs against the library's, at the trained size and at the other sizes, and on
the real photos through the library's preprocessing (pixels compared first: equal or not).
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import test_families as tf  # noqa: E402

import tinyvit  # noqa: E402

LIBRARY = {"timm": "timm", "open_clip": "open_clip", "hf": "transformers", "dinov2": "DINOv2's own"}


def main() -> None:
    import tempfile

    worst: dict[str, dict[str, float]] = defaultdict(lambda: {"native": 0.0, "other": 0.0})
    with tempfile.TemporaryDirectory() as tmp:
        models = {name: tf.load_case(name, Path(tmp) / name) for name in tf.CASES}
        for name, output in tf.PAIRS:
            case = tf.CASES[name]
            x = tf.inputs(name, case["outputs"][output]["input"])
            err = (tf.tinyvit_output(models[name], case, output.split("@")[0], x) - tf.REF[f"{name}/{output}"]).abs()
            key = "other" if "@" in output else "native"
            worst[name][key] = max(worst[name][key], err.max().item())
        photos: dict[str, str] = {}
        for spec_name, entry in tf.FX["preprocessing"]["specs"].items():
            small = entry["small"]
            x, pixels = tf.photo_pixels(tf.spec_from_config(spec_name, "small"))
            keys = [small["pixels"][photo]["npz_key"] for photo in tf.PHOTOS]
            same = all(np.array_equal(p, tf.PIXELS[k]) for p, k in zip(pixels, keys, strict=True))
            with torch.inference_mode():
                err = (models[small["model"]](x) - tf.REF[small["output"]["safetensors_key"]]).abs().max().item()
            photos[spec_name] = f"{'equal' if same else 'DIFFERENT'} pixels, {err:.1g}"
    print("| family | checkpoint as written by | max abs diff, trained size | other sizes |")
    print("|---|---|---:|---:|")
    for name, case in tf.CASES.items():
        other = f"{worst[name]['other']:.1g}" if any("@" in o for o in case["outputs"]) else "—"
        print(f"| {case['family']} | {LIBRARY[case['layout']]} (`{name}`) | {worst[name]['native']:.1g} | {other} |")
    print("\n| real photos through | pixels, then max abs diff of the outputs |\n|---|---|")
    for spec_name, text in photos.items():
        print(f"| `{spec_name}` | {text} |")
    print(f"\ntinyvit {tinyvit.__version__}, torch {torch.__version__}; references: {tf.FX['versions']}")


if __name__ == "__main__":
    main()
