"""Generate tests/fixtures/finetune.json (+ finetune_pixels.npz, photos/*.jpg): fine-tuned classifiers.

Two fine-tunes, each saved the way its library publishes models and read back the way a user would:

* timm: ``vit_tiny_patch16_224`` with 10 classes at 64×64 and a non-default evaluation config,
  saved by ``timm.models.save_for_hf`` (config.json with ``label_names`` + model.safetensors), loaded
  back with ``timm.create_model("local-dir:...", pretrained=True)`` and run through
  ``resolve_data_config`` + ``create_transform``.
* transformers: a small ``ViTForImageClassification`` with 5 named classes (``id2label``), saved by
  ``save_pretrained`` next to a PIL-backend ``ViTImageProcessorPil`` (bicubic, 64×64), run through
  the ``image-classification`` pipeline on file paths.

Inputs are real photographs from ``skimage.data``, written once as JPEGs into tests/fixtures/photos/;
those committed files are what every reference computation reads (and what the tests read).
Weights come from tests/refdata.py ``fill`` under each library's own parameter names, so only
names, shapes, the libraries' config files (verbatim) and their outputs are stored.

Run in the reference environment (see scripts/make_fixtures.py):

    .refs/bin/python scripts/make_finetune_fixtures.py

The outputs are byte-for-byte deterministic (fixed zip timestamps in the .npz, one torch thread).
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import refdata  # noqa: E402

OUT = ROOT / "tests" / "fixtures"
PHOTOS = OUT / "photos"
JPEG_QUALITY = 90

torch.set_grad_enabled(False)
torch.set_num_threads(1)  # one thread: the same float summation order on every run

# name: (skimage.data function, crop box (left, top, right, bottom) or None, output (width, height))
PHOTO_SPECS = {
    "chelsea": ("chelsea", None, (451, 300)),  # landscape 3:2, kept at its native size (odd width)
    "coffee": ("coffee", None, (500, 333)),  # landscape, downscaled from 600×400
    "astronaut": ("astronaut", None, (448, 448)),  # square, downscaled from 512×512
    "rocket": ("rocket", (163, 0, 482, 427), (319, 427)),  # portrait crop around the rocket, odd sizes
}

# timm fine-tune: 10 classes at 64×64, evaluated with a config that differs from the architecture's
# default (vit_tiny_patch16_224.augreg: 224, crop_pct 0.9, bicubic, mean/std 0.5)
TIMM_ARCH = "vit_tiny_patch16_224"
TIMM_CREATE = dict(pretrained=False, num_classes=10, img_size=64)
TIMM_EVAL_CFG = dict(
    input_size=(3, 64, 64), crop_pct=0.875, interpolation="bilinear",
    mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
)  # fmt: skip
TIMM_LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# transformers fine-tune: 5 named classes; layer_norm_eps left at HF's default 1e-12
HF_CONFIG = dict(
    image_size=64, patch_size=16, hidden_size=96, num_hidden_layers=3, num_attention_heads=3,
    intermediate_size=384, num_labels=5,
)  # fmt: skip
HF_LABELS = ["tabby cat", "espresso", "astronaut", "space shuttle", "golden retriever"]
HF_PROCESSOR = dict(size={"height": 64, "width": 64}, resample="BICUBIC")  # non-default filter
HF_PROCESSOR_224 = dict()  # the class defaults: 224×224, bilinear


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def floats(t) -> list[float]:
    """A float32 tensor/array as a list of Python floats (each exactly the float32 value)."""
    return [float(v) for v in np.asarray(t, dtype=np.float32).ravel()]


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like np.savez_compressed, but byte-for-byte reproducible (sorted members, fixed timestamps)
    and LZMA-compressed (a fifth smaller than deflate here); np.load reads it like any .npz."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_LZMA) as zf:
        for key in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_LZMA
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def safetensors_header(path: Path) -> dict:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n])


# ---------------------------------------------------------------------------------------------
# Photos


def make_photos() -> dict[str, dict]:
    import skimage
    import skimage.data

    PHOTOS.mkdir(parents=True, exist_ok=True)
    photos = {}
    for name, (func, box, size) in PHOTO_SPECS.items():
        img = Image.fromarray(getattr(skimage.data, func)()).convert("RGB")
        source_size = img.size
        if box is not None:
            img = img.crop(box)
        if img.size != size:
            img = img.resize(size, Image.Resampling.LANCZOS)
        path = PHOTOS / f"{name}.jpg"
        img.save(path, format="JPEG", quality=JPEG_QUALITY)  # no EXIF, baseline, 4:2:0
        with Image.open(path) as check:
            assert check.size == size and check.mode == "RGB", (name, check.size, check.mode)
        nbytes = path.stat().st_size
        assert nbytes < 60_000, (name, nbytes)
        photos[name] = {
            "file": f"photos/{name}.jpg",
            "source": f"skimage.data.{func}() (scikit-image {skimage.__version__}), {source_size[0]}x{source_size[1]}",
            "crop_box": list(box) if box else None,
            "width": size[0],
            "height": size[1],
            "jpeg_quality": JPEG_QUALITY,
            "bytes": nbytes,
            "sha256": sha256(path),
        }
        print(f"  {path.relative_to(ROOT)}: {size[0]}x{size[1]}, {nbytes} bytes", flush=True)
    return photos


def open_rgb(name: str) -> Image.Image:
    with Image.open(PHOTOS / f"{name}.jpg") as img:
        return img.convert("RGB")


# ---------------------------------------------------------------------------------------------
# timm


def timm_case(photos: dict, arrays: dict[str, np.ndarray]) -> dict:
    import timm
    from safetensors import safe_open
    from timm.data import create_transform, resolve_data_config
    from timm.models import save_for_hf

    model = timm.create_model(TIMM_ARCH, **TIMM_CREATE, pretrained_cfg_overlay=dict(TIMM_EVAL_CFG)).eval()
    state = {k: torch.from_numpy(refdata.fill(k, tuple(v.shape))) for k, v in model.state_dict().items()}
    model.load_state_dict(state, strict=True)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "timm-finetune"
        save_for_hf(model, str(folder), model_config={"label_names": list(TIMM_LABELS)}, safe_serialization=True)
        files = sorted(p.name for p in folder.iterdir())
        assert files == ["config.json", "model.safetensors"], files
        config_text = (folder / "config.json").read_text()
        header = safetensors_header(folder / "model.safetensors")
        with safe_open(folder / "model.safetensors", "pt") as f:
            keys = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
            for k in f.keys():  # what timm wrote is exactly the refdata weights
                assert torch.equal(f.get_tensor(k), state[k]), k
                assert f.get_tensor(k).dtype == torch.float32, k

        # ... and read back the way a user would
        loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
        for k, v in loaded.state_dict().items():
            assert torch.equal(v, state[k]), k
        label_names = loaded.pretrained_cfg.get("label_names")
        pretrained_cfg = {k: v for k, v in loaded.pretrained_cfg.items() if k != "file"}  # file: the temp path
    assert list(label_names) == TIMM_LABELS, label_names

    data_config = resolve_data_config({}, model=loaded)
    transform = create_transform(**data_config)
    print("    timm data config:", data_config, flush=True)
    print("    timm transform:", str(transform).replace("\n", " "), flush=True)

    mean = np.array(data_config["mean"], np.float64).reshape(3, 1, 1) * 255
    std = np.array(data_config["std"], np.float64).reshape(3, 1, 1) * 255
    outputs, worst = {}, 0.0
    for name in photos:
        x = transform(open_rgb(name))
        assert x.dtype == torch.float32 and tuple(x.shape) == tuple(data_config["input_size"]), x.shape
        logits = loaded(x[None])[0]
        probs = logits.softmax(-1)
        top = torch.topk(probs, 5)
        outputs[name] = {
            "logits": floats(logits),
            "probs": floats(probs),
            "top5": [
                {"index": int(i), "label": label_names[int(i)], "score": float(s)}
                for s, i in zip(top.values, top.indices, strict=True)
            ],
        }
        # the transform's 8-bit pixels (normalizing them gives its tensor back to 1e-6)
        ref = x.numpy().astype(np.float64)
        pixels = np.rint(ref * std + mean)
        assert pixels.min() >= 0 and pixels.max() <= 255, name
        back = ((pixels - mean) / std).astype(np.float32)
        worst = max(worst, float(np.abs(back - x.numpy()).max()))
        assert worst <= 1e-6, (name, worst)
        arrays[f"timm/{name}/pixels_uint8"] = pixels.astype(np.uint8)
        top1 = outputs[name]["top5"][0]
        print(f"    timm {name}: top1 {top1['label']} {top1['score']:.4f}", flush=True)

    return {
        "architecture": TIMM_ARCH,
        "create_model_kwargs": {**TIMM_CREATE, "pretrained_cfg_overlay": TIMM_EVAL_CFG},
        "saved_with": "timm.models.save_for_hf(model, folder, model_config={'label_names': label_names}, "
        "safe_serialization=True)",
        "loaded_with": "timm.create_model('local-dir:' + folder, pretrained=True).eval()",
        "files": {"config.json": config_text},
        "weights_file": "model.safetensors",
        "safetensors_metadata": header.get("__metadata__"),
        "keys": keys,
        "label_names": list(label_names),
        "loaded_pretrained_cfg": json.loads(json.dumps(pretrained_cfg)),
        "data_config": json.loads(json.dumps(data_config)),
        "transform_repr": str(transform),
        "pixels": {
            "npz_key": "timm/<photo>/pixels_uint8",
            "layout": "uint8 (3, H, W), RGB; the transform's tensor == (pixels / 255 - mean) / std to 1e-6",
            "max_abs_error": worst,
        },
        "outputs": outputs,
    }


# ---------------------------------------------------------------------------------------------
# transformers


def hf_decode(resized_u8: np.ndarray, processor) -> np.ndarray:
    """ViTImageProcessorPil's arithmetic after the PIL resize: float64 × rescale_factor → float32,
    then (x - mean) / std in float32 (transformers.image_transforms.rescale / normalize)."""
    x = (resized_u8.astype(np.float64) * processor.rescale_factor).astype(np.float32)
    mean = np.array(processor.image_mean, dtype=np.float32)
    std = np.array(processor.image_std, dtype=np.float32)
    return ((x.T - mean) / std).T


def hf_case(photos: dict, arrays: dict[str, np.ndarray]) -> dict:
    from safetensors import safe_open
    from safetensors.torch import save_file
    from transformers import ViTConfig, ViTForImageClassification, pipeline
    from transformers.image_utils import PILImageResampling
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    id2label = dict(enumerate(HF_LABELS))
    cfg = ViTConfig(**HF_CONFIG, id2label=id2label, label2id={v: k for k, v in id2label.items()})
    assert cfg.layer_norm_eps == 1e-12, cfg.layer_norm_eps

    def processor_of(spec: dict) -> ViTImageProcessorPil:
        spec = dict(spec)
        if "resample" in spec:
            spec["resample"] = PILImageResampling[spec["resample"]]
        return ViTImageProcessorPil(**spec)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "hf-finetune"
        ViTForImageClassification(cfg).save_pretrained(folder)
        with safe_open(folder / "model.safetensors", "pt") as f:
            keys = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
        state = {k: torch.from_numpy(refdata.fill(k, s)) for k, s in keys.items()}
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        processor_of(HF_PROCESSOR).save_pretrained(folder)
        files = {n: (folder / n).read_text() for n in ("config.json", "preprocessor_config.json")}

        folder224 = Path(tmp) / "hf-processor-224"
        processor_of(HF_PROCESSOR_224).save_pretrained(folder224)
        files224 = {"preprocessor_config.json": (folder224 / "preprocessor_config.json").read_text()}

        # read back the way a user would; the PIL processor is named explicitly, since
        # AutoImageProcessor (and so a bare pipeline) would pick the torchvision ViTImageProcessor
        processor = ViTImageProcessorPil.from_pretrained(folder)
        processor224 = ViTImageProcessorPil.from_pretrained(folder224)
        model = ViTForImageClassification.from_pretrained(folder).eval()
        for k, v in model.state_dict().items():
            if k in state:
                assert torch.equal(v, state[k]), k
        assert model.config.layer_norm_eps == 1e-12
        assert processor.backend == "pil" and processor224.backend == "pil"
        assert processor.resample == PILImageResampling.BICUBIC, processor.resample
        assert processor224.resample == PILImageResampling.BILINEAR, processor224.resample
        classifier = pipeline("image-classification", model=str(folder), image_processor=processor, device="cpu")
        assert classifier.image_processor is processor
        classifier.model.eval()

        outputs, worst_prob = {}, 0.0
        for name in photos:
            path = str(PHOTOS / f"{name}.jpg")
            top5 = classifier(path, top_k=5)
            img = open_rgb(name)
            pixel_values = processor(images=img, return_tensors="np")["pixel_values"][0]
            assert pixel_values.dtype == np.float32 and pixel_values.shape == (3, 64, 64), pixel_values.shape
            # the pipeline's own preprocessing of the file path gives the same tensor
            assert np.array_equal(classifier.preprocess(path)["pixel_values"][0].numpy(), pixel_values), name
            logits = model(pixel_values=torch.from_numpy(pixel_values)[None]).logits[0]
            probs = logits.softmax(-1)
            for item in top5:
                worst_prob = max(worst_prob, abs(item["score"] - float(probs[model.config.label2id[item["label"]]])))
            outputs[name] = {
                "pipeline_top5": [{"label": d["label"], "score": float(d["score"])} for d in top5],
                "logits": floats(logits),
                "probs": floats(probs),
            }
            arrays[f"hf64/{name}/pixel_values"] = pixel_values

            # the 224 processor: store its resized 8-bit pixels, after checking they decode exactly
            pv224 = processor224(images=img, return_tensors="np")["pixel_values"][0]
            assert pv224.dtype == np.float32 and pv224.shape == (3, 224, 224), pv224.shape
            resized = np.moveaxis(np.asarray(img.resize((224, 224), Image.Resampling.BILINEAR)), -1, 0)
            assert np.array_equal(hf_decode(resized, processor224), pv224), name
            arrays[f"hf224/{name}/resized_uint8"] = np.ascontiguousarray(resized, dtype=np.uint8)
            # and the same understanding reproduces the 64×64 bicubic tensor bit for bit
            resized64 = np.moveaxis(np.asarray(img.resize((64, 64), Image.Resampling.BICUBIC)), -1, 0)
            assert np.array_equal(hf_decode(resized64, processor), pixel_values), name
            print(f"    hf {name}: top1 {top5[0]['label']} {top5[0]['score']:.4f}", flush=True)
        assert worst_prob <= 1e-6, worst_prob

    return {
        "config": {**HF_CONFIG, "id2label": HF_LABELS, "layer_norm_eps": "default (1e-12)"},
        "saved_with": "ViTForImageClassification(config).save_pretrained(folder); model.safetensors rewritten "
        "with refdata.fill under its own keys, metadata {'format': 'pt'}; "
        "ViTImageProcessorPil(**processor).save_pretrained(folder)",
        "processor_class": "transformers.models.vit.image_processing_pil_vit.ViTImageProcessorPil",
        "processor": HF_PROCESSOR,
        "files": files,
        "weights_file": "model.safetensors",
        "safetensors_metadata": {"format": "pt"},
        "keys": keys,
        "pipeline": "pipeline('image-classification', model=folder, image_processor="
        "ViTImageProcessorPil.from_pretrained(folder))(photo_path, top_k=5)",
        "pipeline_vs_probs_max_abs_diff": worst_prob,
        "processor_224": {
            "processor": HF_PROCESSOR_224,
            "note": "ViTImageProcessorPil's class defaults: 224x224, BILINEAR",
            "files": files224,
        },
        "pixels": {
            "npz": "finetune_pixels.npz",
            "hf64/<photo>/pixel_values": "float32 (3, 64, 64): processor(images=Image.open(photo).convert('RGB'))",
            "hf224/<photo>/resized_uint8": "uint8 (3, 224, 224): the PIL bilinear resize inside processor_224; its "
            "pixel_values are exactly ((u8.astype(float64) * rescale_factor).astype(float32) - float32(mean)) "
            "/ float32(std), checked bit for bit",
        },
        "outputs": outputs,
    }


# ---------------------------------------------------------------------------------------------


def main() -> None:
    import safetensors
    import timm
    import transformers

    versions = {
        "torch": torch.__version__, "timm": timm.__version__, "transformers": transformers.__version__,
        "pillow": Image.__version__, "numpy": np.__version__, "safetensors": safetensors.__version__,
    }  # fmt: skip
    print("reference versions:", versions, flush=True)
    print("photos", flush=True)
    photos = make_photos()
    arrays: dict[str, np.ndarray] = {}
    print("timm fine-tune", flush=True)
    timm_fx = timm_case(photos, arrays)
    print("transformers fine-tune", flush=True)
    hf_fx = hf_case(photos, arrays)

    fixture = {
        "generated_by": "scripts/make_finetune_fixtures.py",
        "versions": versions,
        "photos": photos,
        "timm": timm_fx,
        "hf": hf_fx,
    }
    (OUT / "finetune.json").write_text(json.dumps(fixture, indent=1) + "\n")
    write_npz(OUT / "finetune_pixels.npz", arrays)
    total = 0
    for f in [OUT / "finetune.json", OUT / "finetune_pixels.npz", *sorted(PHOTOS.glob("*.jpg"))]:
        total += f.stat().st_size
        print(f"  {f.relative_to(ROOT)}: {f.stat().st_size / 1e3:.1f} kB  sha256 {sha256(f)}")
    print(f"  total {total / 1e3:.1f} kB")


if __name__ == "__main__":
    main()
