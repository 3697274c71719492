"""Generate tests/fixtures/zeroshot.{json,safetensors} and tests/fixtures/zeroshot/<case>/ (issue #30:
CLIP and SigLIP whole: both towers, text and image embeddings, zero-shot classification).

Reference fixtures computed by the home libraries themselves (open_clip and transformers), never by
tinyvit and never typed in. Each case is a small, complete, random-weight CLIP or SigLIP (image
32 px, patch 8, width 64, depth 2, 4 heads, MLP ratio 4; text width 64, depth 2, 4 heads, the
family's real context length: 77 for CLIP, 64 for SigLIP; embedding size 32), saved the way its
library saves it for the Hub, then loaded back through the library's own loading path:

- ``open_clip_clip``: open_clip ``CLIP`` (QuickGELU, its own ``SimpleTokenizer``), written by
  ``open_clip.push_to_hf_hub.save_for_hf(..., safe_serialization=True)`` (``open_clip_config.json`` +
  ``open_clip_model.safetensors``), loaded with ``open_clip.create_model_from_pretrained('local-dir:…')``
  and ``open_clip.get_tokenizer('local-dir:…')``;
- ``hf_clip``: transformers ``CLIPModel`` + ``CLIPProcessor`` (``CLIPImageProcessor``, the
  ``tokenizer.json`` of tests/fixtures/text/hf_clip), written by ``save_pretrained``, loaded with
  ``CLIPModel.from_pretrained`` / ``AutoProcessor.from_pretrained`` and by
  ``pipeline('zero-shot-image-classification', model=folder)``;
- ``hf_siglip``: transformers ``SiglipModel`` + ``SiglipProcessor`` (``SiglipImageProcessor``, the
  ``spiece.model`` of tests/fixtures/text/hf_siglip), the same way;
- ``open_clip_siglip``: open_clip ``CustomTextCLIP`` as its ViT-B-16-SigLIP config (image tower timm's
  ``vit_base_patch16_siglip_224`` under ``visual.trunk.*``: open_clip's ``TimmModel`` cannot shrink it, so this
  one image tower is full size, 224 px; text tower small, the ``tokenizer.json`` of
  tests/fixtures/text/open_clip_siglip written next to it by ``save_for_hf`` through ``HFTokenizer``).

Weights are ``tests/refdata.py`` ``fill(name, shape)`` for every float tensor under the checkpoint's own
on-disk names (``logit_scale`` and ``logit_bias`` included). Inputs: the four photos
tests/fixtures/photos/*.jpg through each library's own preprocessing; a list of prompts; five labels.
Outputs: image and text embeddings, open_clip's zero-shot recipe (``build_zero_shot_classifier`` with
three templates, then softmax / sigmoid of the scaled cosine), and for transformers the
zero-shot-image-classification pipeline's results exactly as returned.

Set up the reference environment as scripts/make_family_fixtures.py and scripts/make_text_fixtures.py
say, then:

    .refs/bin/python scripts/make_text_fixtures.py      # once: the tokenizer files this script reuses
    .refs/bin/python scripts/make_zeroshot_fixtures.py

Nothing is downloaded. Deterministic (one torch thread): a rerun writes the same bytes.
See tests/fixtures/ZEROSHOT.md for the format.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_family_fixtures import (  # noqa: E402
    OPENAI_MEAN,
    OPENAI_STD,
    PHOTO_NAMES,
    buffers_of,
    filled_state,
    jsonable,
    key_table,
    open_rgb,
    safetensors_keys,
    to_pixels,
)

OUT = ROOT / "tests" / "fixtures"
TEXT_FILES = OUT / "text"  # tokenizer files made by scripts/make_text_fixtures.py
SIDE = OUT / "zeroshot"  # the side files each case's library wrote (weights never stored)

torch.set_grad_enabled(False)
torch.set_num_threads(1)

LABELS = ["tabby cat", "espresso", "astronaut", "rocket", "golden retriever"]
HYPOTHESIS = "a photo of a {}."  # the pipeline's second run; its default is "This is a photo of {}."
TEMPLATES = ["a photo of a {}.", "a blurry photo of the {}.", "itap of my {}!"]  # open_clip's recipe
PROMPTS = [
    "This is a photo of tabby cat.",
    "This is a photo of espresso.",
    "This is a photo of astronaut.",
    "a photo of a rocket.",
    "a photo of a golden retriever.",
    "a blurry photo of the espresso.",
    "itap of my tabby cat!",
    "A PHOTO OF A ROCKET!!! (launch, 1969)",
    "Tom &amp; Jerry: a cat &amp; a mouse",
    "café crème — “espresso”, s'il vous plaît…",
    "an astronaut   riding\ta horse on the moon",
    "",
]

SMALL_TEXT = dict(width=64, heads=4, layers=2)
OC_VISION = dict(image_size=32, layers=2, width=64, patch_size=8, head_width=16)
HF_VISION = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                 patch_size=8)  # fmt: skip
HF_TEXT = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4)
EMBED = 32


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Fixture:
    def __init__(self):
        self.cases: dict[str, dict] = {}
        self.tensors: dict[str, torch.Tensor] = {}

    def put(self, case: str, name: str, value: torch.Tensor, call: str) -> dict:
        v = value.detach().float().contiguous().clone()
        assert torch.isfinite(v).all(), (case, name)
        if v.ndim and v.shape[0] >= 2:
            assert not torch.equal(v[0], v[1]), (case, name, "rows equal")
        self.tensors[f"{case}/{name}"] = v
        out = {"key": f"{case}/{name}", "shape": list(v.shape), "call": call}
        if v.ndim == 2:  # how far apart the rows are: a tolerance must stay well below min_row_gap
            gaps = (v[:, None] - v[None]).abs().amax(-1).fill_diagonal_(float("inf"))
            out["max_abs"] = float(v.abs().max())
            out["min_row_gap"] = float(gaps.min())
        return out


def pixel_outputs(fx: Fixture, case: str, pixels: torch.Tensor, mean, std, call: str) -> dict:
    """The preprocessed photos: as the 8-bit values p with (p / 255 - mean) / std == pixels (to within
    ``uint8_roundtrip_max_error``), the float32 tensor itself when small, and its SHA-256."""
    p8 = []
    worst = 0.0
    for x in pixels:
        p, err = to_pixels(x, mean, std)
        assert err < 1e-5, (case, err)
        p8.append(torch.from_numpy(p))
        worst = max(worst, err)
    out = {
        "pixels_uint8": {"key": f"{case}/pixels_uint8", "shape": list(pixels.shape), "dtype": "uint8",
                         "mean": list(mean), "std": list(std), "uint8_roundtrip_max_error": worst,
                         "call": "the 8-bit values behind: " + call},
        "pixels_float32_sha256": sha256(pixels.float().contiguous().numpy().tobytes()),
    }  # fmt: skip
    fx.tensors[f"{case}/pixels_uint8"] = torch.stack(p8).contiguous()
    if pixels.numel() * 4 <= 100_000:
        out["pixels"] = fx.put(case, "pixels", pixels, call)
    return out


def photos():
    return [open_rgb(n) for n in PHOTO_NAMES]


def folder_manifest(case: str, folder: Path, weights: str, reused: dict[str, str]) -> dict:
    """Every file the library wrote: weights (rebuilt by the test from ``keys``), a file identical to one
    under tests/fixtures/text/ (``reused``: file name -> path there, possibly gzipped), or a side file
    copied to tests/fixtures/zeroshot/<case>/."""
    out = {}
    (SIDE / case).mkdir(parents=True, exist_ok=True)
    for p in sorted(folder.iterdir()):
        data = p.read_bytes()
        entry = {"size": len(data), "sha256": sha256(data)}
        if p.name == weights:
            entry["source"] = "weights"
        elif p.name in reused:
            src = OUT / reused[p.name]
            stored = src.read_bytes()
            if src.suffix == ".gz":
                stored = gzip.decompress(stored)
            assert stored == data, (case, p.name, "differs from", src)
            entry["source"] = reused[p.name] + (" (gunzip)" if src.suffix == ".gz" else "")
        else:
            assert len(data) < 50_000, (case, p.name, len(data))
            shutil.copy(p, SIDE / case / p.name)
            entry["source"] = f"zeroshot/{case}/{p.name}"
        out[p.name] = entry
    return out


def scores(image_features: torch.Tensor, classifier: torch.Tensor, logit_scale, logit_bias):
    """open_clip's zero-shot scoring: normalized image features against the classifier columns."""
    feats = torch.nn.functional.normalize(image_features, dim=-1)
    logits = logit_scale.exp() * feats @ classifier
    if logit_bias is not None:
        logits = logits + logit_bias
        return logits, torch.sigmoid(logits)
    return logits, logits.softmax(dim=-1)


# ---------------------------------------------------------------------------------------------
# open_clip


class _NoTokenizer:
    """save_for_hf calls tokenizer.save_pretrained; open_clip's SimpleTokenizer has no files to write
    (its BPE ships in the open_clip wheel; push_to_hf_hub would save openai/clip-vit-large-patch14's)."""

    def save_pretrained(self, directory) -> None:
        pass


def oc_clip_config() -> dict:
    return {
        "model_cfg": dict(embed_dim=EMBED, quick_gelu=True, vision_cfg=dict(OC_VISION),
                          text_cfg=dict(context_length=77, vocab_size=49408, **SMALL_TEXT)),
        "preprocess_cfg": dict(mean=list(OPENAI_MEAN), std=list(OPENAI_STD), interpolation="bicubic",
                               resize_mode="shortest"),
    }  # fmt: skip


def oc_siglip_config() -> dict:
    base = json.loads((TEXT_FILES / "open_clip_siglip" / "open_clip_config.json").read_text())
    text = dict(base["model_cfg"]["text_cfg"])
    vision = {"image_size": 224, "timm_model_name": "vit_base_patch16_siglip_224", "timm_model_pretrained": False,
              "timm_pool": "map", "timm_proj": "none"}  # fmt: skip
    return {
        "model_cfg": {"embed_dim": 768, "init_logit_bias": -10, "custom_text": True, "vision_cfg": vision,
                      "text_cfg": text},
        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic",
                           "resize_mode": "squash"},
    }  # fmt: skip


def open_clip_case(fx: Fixture, name: str, config: dict, tmp: Path, tokenizer_from: str | None) -> None:
    import open_clip
    from open_clip.push_to_hf_hub import save_for_hf

    boot = tmp / f"{name}_boot"
    boot.mkdir()
    (boot / "open_clip_config.json").write_text(json.dumps(config))
    if tokenizer_from:
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(TEXT_FILES / tokenizer_from / f, boot / f)
    model = open_clip.create_model(f"local-dir:{boot}").eval()  # random init, no weights there
    state = model.state_dict()
    keys = key_table(state)
    filled = filled_state(keys, state)
    model.load_state_dict(filled, strict=True)
    del state
    tokenizer = open_clip.get_tokenizer(f"local-dir:{boot}") if tokenizer_from else _NoTokenizer()
    folder = tmp / name
    save_for_hf(model, tokenizer, config["model_cfg"], str(folder), safe_serialization=True)
    del model
    disk_keys, meta = safetensors_keys(folder / "open_clip_model.safetensors")
    assert disk_keys == keys, name
    reused = {}
    if tokenizer_from:
        reused = {"tokenizer.json": f"text/{tokenizer_from}/tokenizer.json"}
    files = folder_manifest(name, folder, "open_clip_model.safetensors", reused)

    loaded, preprocess = open_clip.create_model_from_pretrained(f"local-dir:{folder}")
    loaded.eval()
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, filled[k]), (name, k)
    del filled
    tok = open_clip.get_tokenizer(f"local-dir:{folder}")
    pixels = torch.stack([preprocess(im) for im in photos()])
    ids = tok(PROMPTS)
    put = fx.put
    image_features = loaded.encode_image(pixels, normalize=False)
    text_features = loaded.encode_text(ids, normalize=False)
    classifier = open_clip.build_zero_shot_classifier(loaded, tok, LABELS, TEMPLATES, num_classes_per_batch=None)
    template_ids = tok([t.format(c) for c in LABELS for t in TEMPLATES])
    logit_bias = loaded.logit_bias
    logits, probs = scores(loaded.encode_image(pixels, normalize=True), classifier, loaded.logit_scale, logit_bias)
    ref_logits, _ = scores(image_features, classifier, loaded.logit_scale, logit_bias)
    assert torch.allclose(logits, ref_logits, atol=1e-5), name
    custom = config["model_cfg"].get("custom_text", False)
    text_tower = loaded.text if custom else loaded
    case = {
        "library": "open_clip",
        "class": type(loaded).__name__,
        "layout": "open_clip_custom" if custom else "open_clip",
        "saved_with": "open_clip.push_to_hf_hub.save_for_hf(model, tokenizer, model_cfg, folder, "
        "safe_serialization=True)" + ("" if tokenizer_from else "  (tokenizer stubbed: SimpleTokenizer has no files)"),
        "loaded_with": "model, preprocess = open_clip.create_model_from_pretrained('local-dir:' + folder); "
        "tokenizer = open_clip.get_tokenizer('local-dir:' + folder)",
        "files": files,
        "safetensors_metadata": meta,
        "keys": keys,
        "buffers": buffers_of(loaded),
        "tokenizer": type(tok).__name__ + (f" (text/{tokenizer_from}/tokenizer.json)" if tokenizer_from else ""),
        "context_length": int(ids.shape[1]),
        "preprocess": {"transform": repr(preprocess), "resolved_cfg": jsonable(loaded.visual.preprocess_cfg)},
        "logit_scale": float(loaded.logit_scale),
        "logit_bias": None if logit_bias is None else float(logit_bias),
        "text_ids": ids.tolist(),
        "template_ids": template_ids.tolist(),
        "facts": {
            "text_pool_type": getattr(text_tower, "text_pool_type", getattr(text_tower, "pool_type", None)),
            "text_causal_mask": getattr(text_tower, "attn_mask", None) is not None,
            "text_act": type(text_tower.transformer.resblocks[0].mlp.gelu).__name__,
            "visual_class": type(loaded.visual).__name__,
        },
        "outputs": {
            **pixel_outputs(fx, name, pixels, loaded.visual.preprocess_cfg["mean"],
                            loaded.visual.preprocess_cfg["std"],
                            "torch.stack([preprocess(Image.open(p).convert('RGB')) for p in photos])"),
            "image_features": put(name, "image_features", image_features,
                                  "model.encode_image(pixels, normalize=False)"),
            "text_features": put(name, "text_features", text_features, "model.encode_text(tokenizer(prompts), "
                                 "normalize=False)"),
            "classifier": put(name, "classifier", classifier, "open_clip.build_zero_shot_classifier(model, tokenizer, "
                              "labels, templates, num_classes_per_batch=None)  # (embed, classes)"),
            "zeroshot_logits": put(name, "zeroshot_logits", logits, "model.logit_scale.exp() * "
                                   "model.encode_image(pixels, normalize=True) @ classifier"
                                   + (" + model.logit_bias" if logit_bias is not None else "")),
            "zeroshot_probs": put(name, "zeroshot_probs", probs, "sigmoid(zeroshot_logits)" if logit_bias is not None
                                  else "zeroshot_logits.softmax(dim=-1)"),
        },
    }  # fmt: skip
    fx.cases[name] = case
    print(f"  {name}: {len(keys)} keys, probs {probs[0].tolist()}", flush=True)


# ---------------------------------------------------------------------------------------------
# transformers


def hf_clip_tokenizer(tmp: Path):
    """transformers' CLIPTokenizer from the tokenizer.json of tests/fixtures/text/hf_clip, with
    model_max_length 77 as OpenAI's Hub repos have it."""
    from transformers import AutoTokenizer

    d = tmp / "hf_clip_tok"
    d.mkdir()
    (d / "tokenizer.json").write_bytes(gzip.decompress((TEXT_FILES / "hf_clip" / "tokenizer.json.gz").read_bytes()))
    shutil.copy(TEXT_FILES / "hf_clip" / "tokenizer_config.json", d / "tokenizer_config.json")
    return AutoTokenizer.from_pretrained(str(d), model_max_length=77)


def hf_case(fx: Fixture, name: str, tmp: Path) -> None:
    from open_clip import build_zero_shot_classifier
    from transformers import (
        AutoProcessor,
        AutoTokenizer,
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        SiglipConfig,
        SiglipImageProcessor,
        SiglipModel,
        SiglipProcessor,
        pipeline,
    )

    siglip = name == "hf_siglip"
    if siglip:
        tokenizer = AutoTokenizer.from_pretrained(str(TEXT_FILES / "hf_siglip"))
        cls = SiglipModel
        config = SiglipConfig(text_config=dict(**HF_TEXT, vocab_size=len(tokenizer), max_position_embeddings=64),
                              vision_config=dict(**HF_VISION))  # fmt: skip
        processor = SiglipProcessor(image_processor=SiglipImageProcessor(size={"height": 32, "width": 32}),
                                    tokenizer=tokenizer)  # fmt: skip
        reused = {"spiece.model": "text/hf_siglip/spiece.model"}
    else:
        tokenizer = hf_clip_tokenizer(tmp)
        cls = CLIPModel
        config = CLIPConfig(text_config=dict(**HF_TEXT, vocab_size=49408, max_position_embeddings=77),
                            vision_config=dict(**HF_VISION), projection_dim=EMBED)  # fmt: skip
        image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
        reused = {"tokenizer.json": "text/hf_clip/tokenizer.json.gz"}
    folder = tmp / name
    cls(config).save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    keys, meta = safetensors_keys(folder / "model.safetensors")
    save_file(filled_state(keys), str(folder / "model.safetensors"), metadata=meta)
    files = folder_manifest(name, folder, "model.safetensors", reused)

    loaded = cls.from_pretrained(str(folder)).eval()
    proc = AutoProcessor.from_pretrained(str(folder))
    ctx = 64 if siglip else 77
    kw = dict(padding="max_length", max_length=ctx, truncation=True, return_tensors="pt")
    pixels = proc(images=photos(), return_tensors="pt")["pixel_values"]
    enc = proc.tokenizer(PROMPTS, **kw)
    image_features = loaded.get_image_features(pixel_values=pixels).pooler_output
    text_features = loaded.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    text_features = text_features.pooler_output

    class Wrapped(torch.nn.Module):  # open_clip's recipe through the transformers model
        def encode_text(self, batch, normalize=False):
            feats = loaded.get_text_features(**batch).pooler_output
            return torch.nn.functional.normalize(feats, dim=-1) if normalize else feats

    def tok(texts):
        return proc.tokenizer(texts, **kw)

    classifier = build_zero_shot_classifier(Wrapped(), tok, LABELS, TEMPLATES, num_classes_per_batch=None)
    template_enc = tok([t.format(c) for c in LABELS for t in TEMPLATES])
    logit_bias = loaded.logit_bias if siglip else None
    logits, probs = scores(image_features, classifier, loaded.logit_scale, logit_bias)

    pipe = pipeline("zero-shot-image-classification", model=str(folder))
    images = photos()
    runs = {
        "default": {"call": "pipe(images, candidate_labels=labels)", "hypothesis_template": None,
                    "result": pipe(images, candidate_labels=LABELS)},
        "a_photo_of": {"call": "pipe(images, candidate_labels=labels, hypothesis_template=HYPOTHESIS)",
                       "hypothesis_template": HYPOTHESIS,
                       "result": pipe(images, candidate_labels=LABELS, hypothesis_template=HYPOTHESIS)},
    }  # fmt: skip
    # the pipeline's scores recomputed from the embeddings: which padding / mask / template it used
    for run in runs.values():
        texts = [(run["hypothesis_template"] or "This is a photo of {}.").format(c) for c in LABELS]
        pipe_kw = kw if siglip else dict(padding=True, return_tensors="pt")
        t_enc = proc.tokenizer(texts, **pipe_kw)
        t = torch.nn.functional.normalize(loaded.get_text_features(**t_enc).pooler_output, dim=-1)
        _, p = scores(image_features, t.T, loaded.logit_scale, logit_bias)
        got = torch.tensor([[{r["label"]: r["score"] for r in res}[c] for c in LABELS] for res in run["result"]])
        run["max_abs_diff_to_recomputed"] = float((got - p).abs().max())
        assert run["max_abs_diff_to_recomputed"] < 1e-6, (name, run["max_abs_diff_to_recomputed"])
        run["text_ids"] = t_enc["input_ids"].tolist()
        run["attention_mask"] = t_enc["attention_mask"].tolist()

    put = fx.put
    case = {
        "library": "transformers",
        "class": cls.__name__,
        "layout": "hf",
        "saved_with": f"{cls.__name__}(config).save_pretrained(folder); {type(processor).__name__}(image_processor, "
        "tokenizer).save_pretrained(folder); model.safetensors then rewritten with the refdata weights "
        "(same keys, same __metadata__)",
        "loaded_with": f"{cls.__name__}.from_pretrained(folder); AutoProcessor.from_pretrained(folder); "
        "pipeline('zero-shot-image-classification', model=folder)",
        "files": files,
        "safetensors_metadata": meta,
        "keys": keys,
        "buffers": buffers_of(loaded),
        "processor_class": type(proc).__name__,
        "image_processor_class": type(proc.image_processor).__name__,
        "tokenizer_class": type(proc.tokenizer).__name__,
        "tokenizer_call": f"processor.tokenizer(texts, padding='max_length', max_length={ctx}, truncation=True)",
        "context_length": ctx,
        "logit_scale": float(loaded.logit_scale),
        "logit_bias": float(logit_bias) if siglip else None,
        "text_ids": enc["input_ids"].tolist(),
        "text_attention_mask": enc["attention_mask"].tolist(),
        "template_ids": template_enc["input_ids"].tolist(),
        "template_attention_mask": template_enc["attention_mask"].tolist(),
        "pipeline": runs,
        "outputs": {
            **pixel_outputs(fx, name, pixels, proc.image_processor.image_mean, proc.image_processor.image_std,
                            "processor(images=photos, return_tensors='pt').pixel_values"),
            "image_features": put(name, "image_features", image_features,
                                  "model.get_image_features(pixel_values).pooler_output"),
            "text_features": put(name, "text_features", text_features,
                                 "model.get_text_features(input_ids, attention_mask).pooler_output  # tokenizer_call"),
            "classifier": put(name, "classifier", classifier, "open_clip.build_zero_shot_classifier(m, tok, labels, "
                              "templates, num_classes_per_batch=None) with m.encode_text = get_text_features(**ids), "
                              "tok = tokenizer_call"),
            "zeroshot_logits": put(name, "zeroshot_logits", logits, "model.logit_scale.exp() * "
                                   "normalize(image_features) @ classifier"
                                   + (" + model.logit_bias" if siglip else "")),
            "zeroshot_probs": put(name, "zeroshot_probs", probs, "sigmoid(zeroshot_logits)" if siglip
                                  else "zeroshot_logits.softmax(dim=-1)"),
        },
    }  # fmt: skip
    fx.cases[name] = case
    print(f"  {name}: {len(keys)} keys, files {sorted(files)}", flush=True)


# ---------------------------------------------------------------------------------------------


def main() -> None:
    import open_clip
    import safetensors
    import timm
    import tokenizers
    import torchvision
    import transformers

    versions = {
        "torch": torch.__version__, "torchvision": torchvision.__version__, "transformers": transformers.__version__,
        "open_clip": open_clip.__version__, "timm": timm.__version__, "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__, "numpy": np.__version__,
    }  # fmt: skip
    print("reference versions:", versions, flush=True)
    if SIDE.exists():
        shutil.rmtree(SIDE)
    SIDE.mkdir()
    fx = Fixture()
    only = set(sys.argv[1:])
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if not only or "open_clip_clip" in only:
            open_clip_case(fx, "open_clip_clip", oc_clip_config(), tmp, None)
        for name in ("hf_clip", "hf_siglip"):
            if not only or name in only:
                hf_case(fx, name, tmp)
        if not only or "open_clip_siglip" in only:
            open_clip_case(fx, "open_clip_siglip", oc_siglip_config(), tmp, "open_clip_siglip")
    fixture = {
        "generated_by": "scripts/make_zeroshot_fixtures.py",
        "versions": versions,
        "photos": [f"photos/{n}.jpg" for n in PHOTO_NAMES],
        "labels": LABELS,
        "templates": TEMPLATES,
        "hypothesis_template": HYPOTHESIS,
        "prompts": PROMPTS,
        "cases": fx.cases,
    }
    (OUT / "zeroshot.json").write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    save_file(fx.tensors, str(OUT / "zeroshot.safetensors"),
              metadata={"generated_by": "scripts/make_zeroshot_fixtures.py"})  # fmt: skip
    paths = [OUT / "zeroshot.json", OUT / "zeroshot.safetensors", *sorted(p for p in SIDE.rglob("*") if p.is_file())]
    for p in paths:
        print(f"  {p.relative_to(ROOT)}: {p.stat().st_size / 1e3:.1f} kB  sha256 {sha256(p.read_bytes())}")


if __name__ == "__main__":
    main()
