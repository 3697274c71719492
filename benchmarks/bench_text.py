"""The text side of CLIP (issue #30): tinyvit vs open_clip, one process, alternating rounds.

    .refs/bin/python benchmarks/bench_text.py [--rounds 3]     (the reference venv: open_clip and
                                                              tinyvit's [text] extra; PYTHONPATH=src)

A full-size open_clip ViT-B-32 with random weights is saved as open_clip saves it for the Hub
(``open_clip_config.json`` + ``open_clip_model.safetensors``) and tinyvit loads that folder:

* text tower throughput: 1,024 prompts (ImageNet class names in open_clip's templates), tokenized
  and encoded, batch 256 — open_clip ``tokenizer`` + ``encode_text`` vs ``tinyvit.embed_text``;
* zero-shot end to end on a folder of real photos (scikit-image's, re-encoded as ImageNet-size
  JPEGs) with 5 classes and 3 templates: open_clip (``build_zero_shot_classifier``, its
  preprocessing, ``encode_image``, softmax) vs ``tinyvit.predict(..., classes=, templates=)``;
* a class set of open_clip's 80 ImageNet templates built once, then read from tinyvit's cache
  (``--imagenet-classes N``: how many of the 1,000 classes; the full set extrapolates by prompts/s).

Times are medians of the rounds; ratios are open_clip / tinyvit time (> 1: tinyvit is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import open_clip  # noqa: E402
import torch  # noqa: E402
from bench_ray import machine_line  # noqa: E402
from PIL import Image  # noqa: E402

import tinyvit  # noqa: E402
from tinyvit.run.zeroshot import imagenet_zeroshot  # noqa: E402

LABELS = ["tabby cat", "espresso", "astronaut", "rocket", "golden retriever"]
TEMPLATES = ["a photo of a {}.", "a blurry photo of the {}.", "itap of my {}!"]


def save_folder(folder: Path) -> tuple:
    """open_clip's ViT-B-32 (random weights) saved as its Hub files: ``open_clip_config.json``
    (``model_cfg`` and ``preprocess_cfg``, as ``save_for_hf`` writes them) + safetensors."""
    from safetensors.torch import save_file

    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    model.eval()
    folder.mkdir(parents=True)
    cfg = {"model_cfg": open_clip.get_model_config("ViT-B-32"),
           "preprocess_cfg": {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD),
                              "interpolation": "bicubic", "resize_mode": "shortest"}}  # fmt: skip
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return model, preprocess, open_clip.get_tokenizer("ViT-B-32")


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def open_clip_zero_shot(model, preprocess, tokenizer, files: list[Path]) -> torch.Tensor:
    with torch.inference_mode():
        classifier = open_clip.build_zero_shot_classifier(model, tokenizer, LABELS, TEMPLATES,
                                                          num_classes_per_batch=None, device="cpu")  # fmt: skip
        out = []
        for i in range(0, len(files), 8):
            x = torch.stack([preprocess(Image.open(f).convert("RGB")) for f in files[i : i + 8]])
            e = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
            out.append((model.logit_scale.exp() * e @ classifier).softmax(-1))
        return torch.cat(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--prompts", type=int, default=1024)
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--imagenet-classes", type=int, default=25)
    args = p.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["HF_HOME"] = str(tmp / "hf")  # an empty cache: the class sets are built here
        folder = tmp / "ViT-B-32"
        model, preprocess, tokenizer = save_folder(folder)
        data = imagenet_zeroshot()
        prompts = [t.format(c) for c in data["classnames"] for t in data["openai_templates"]][: args.prompts]
        from bench_pipeline import make_set

        files = make_set(tmp / "photos", args.images, (500, 375))
        rows = measure(args, model, tokenizer, preprocess, folder, prompts, files)
        build = build_imagenet(str(folder), data, args.imagenet_classes)
    print(machine_line("open_clip_torch"))
    print()
    print("| what | open_clip | tinyvit | ratio (open_clip / tinyvit time) |")
    print("|---|---:|---:|---:|")
    for name, (a, b, unit) in rows.items():
        print(f"| {name} | {a:.2f} {unit} | {b:.2f} {unit} | {a / b:.2f}x |")
    print()
    print(json.dumps(build))


def measure(args, model, tokenizer, preprocess, folder, prompts, files) -> dict:
    t_oc, t_tv, z_oc, z_tv = [], [], [], []
    tinyvit.embed_text(prompts[:8], str(folder))  # loaded once (both libraries hold their model)
    with torch.inference_mode():
        for _ in range(args.rounds):
            t_oc.append(timed(lambda: [model.encode_text(tokenizer(prompts[i : i + 256]))
                                       for i in range(0, len(prompts), 256)]))  # fmt: skip
            t_tv.append(timed(lambda: tinyvit.embed_text(prompts, str(folder), batch_size=256)))
            z_oc.append(timed(lambda: open_clip_zero_shot(model, preprocess, tokenizer, files)))
            z_tv.append(timed(lambda: tinyvit.predict(files, str(folder), classes=LABELS, templates=TEMPLATES,
                                                      progress=False)))  # fmt: skip
    med = statistics.median
    return {
        f"text tower: {len(prompts)} prompts, batch 256": (med(t_oc), med(t_tv), "s"),
        f"zero-shot: {len(files)} photos, 5 classes x 3 templates, end to end": (med(z_oc), med(z_tv), "s"),
    }


def build_imagenet(folder: str, data: dict, n: int) -> dict:
    classes = data["classnames"][:n]
    first = timed(lambda: tinyvit.predict(Image.new("RGB", (64, 64)), folder, classes=classes, templates="openai"))
    again = timed(lambda: tinyvit.predict(Image.new("RGB", (64, 64)), folder, classes=classes, templates="openai"))
    prompts = n * len(data["openai_templates"])
    return {"classes": n, "prompts": prompts, "first_s": round(first, 2), "cached_s": round(again, 3),
            "prompts_per_s": round(prompts / first, 1),
            "full_imagenet_80000_prompts_estimate_min": round(80_000 / (prompts / first) / 60, 1),
            "python": platform.python_version()}  # fmt: skip


if __name__ == "__main__":
    main()
