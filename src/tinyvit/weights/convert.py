"""The one conversion step: a checkpoint as fetched → tensors under tinyvit's (= timm's) names, a
weights record, checked against each other; kept in the cache once per content.

:func:`read_weights` takes what ``files.read_checkpoint`` read, renames the tensors
(``layouts.py``), works out the architecture (``architecture.py``) and gathers what the checkpoint
says about its class names and its preprocessing into a :class:`Weights` record.
:func:`prepare` is what loading calls for every kind of source, the same way: a checkpoint already
under tinyvit's names with a known record (the zoo's timm files, tinyvit's own) is read in place;
any other is read, renamed and checked against its architecture, and — when it has a content key
(the zoo's, a Hub file's SHA-256, a URL) — written atomically into the cache, so the next load
reads that file and converts nothing. A local checkpoint is the user's file, which may change: it
is converted in memory on each load. :func:`convert` writes a tinyvit safetensors file.

======================  ====================================================================
timm                    ``cls_token``, ``blocks.0.attn.qkv.weight``, … (tinyvit's own names);
                        a Hub folder's ``config.json`` (``pretrained_cfg``, ``label_names``)
hf                      transformers' on-disk names (``vit.encoder.layer.0.attention.attention
                        .query.weight``) and transformers-5 in-memory names (``vit.layers.0
                        .attention.q_proj.weight``); ``vit.`` prefix optional; ``config.json``
                        (``id2label``) and ``preprocessor_config.json``
mmpretrain              ``backbone.layers.0.attn.qkv.weight``, ``head.layers.head.weight``;
                        class names from the checkpoint's ``meta.dataset_meta.classes``
npz                     Google's JAX ``.npz`` (``Transformer/encoderblock_0/...``)
open_clip, dinov2       open_clip's ``visual.*`` (with ``open_clip_config.json``), DINOv2's own
======================  ====================================================================
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import os
from dataclasses import replace
from importlib import resources
from pathlib import Path

import torch

from tinyvit.core.config import ViTConfig
from tinyvit.core.errors import WeightsError
from tinyvit.core.fsutil import sha256_file
from tinyvit.images.spec import PreprocessSpec, size_rule
from tinyvit.models.vit import check_state_dict
from tinyvit.weights._hub import Fetched, converted_path
from tinyvit.weights.architecture import ArchArg, infer_config, refuse_unsupported
from tinyvit.weights.files import (
    Checkpoint,
    read_checkpoint,
    read_header,
    read_record,
    read_tensors,
    save,
    weights_file_of,
)
from tinyvit.weights.layouts import detect_layout, to_timm
from tinyvit.weights.manifest import entries
from tinyvit.weights.record import LabelsArg, Source, TextTower, Weights, labels_from_mapping, parse_labels

__all__ = ["convert", "detect_layout", "prepare", "prepare_text", "read_weights", "to_timm", "with_overrides"]

# ---------------------------------------------------------------------------------------------
# The zoo's weights of an architecture


def zoo_weights(config: ViTConfig, layout: str) -> Weights | None:
    """The zoo weights with exactly this architecture published in this layout (a checkpoint in a
    library's layout was evaluated with that library's pipeline), if any."""
    for e in entries().values():
        if e.arch == config:
            return next((w for w in e.weights if w.source.layout == layout), e.weights[0])
    return None


# ---------------------------------------------------------------------------------------------
# What the checkpoint says: class names and preprocessing


_HF_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


# transformers' processors for ViTs: what they do, in PreprocessSpec's terms
_HF_PROCESSORS = (
    "ViTImageProcessor", "CLIPImageProcessor", "BitImageProcessor", "SiglipImageProcessor", "DINOv3ViTImageProcessor",
)  # fmt: skip
# processors that resize to a square (size: height, width) with bilinear by default (the others: bicubic)
_HF_SQUARE = ("ViTImageProcessor", "SiglipImageProcessor", "DINOv3ViTImageProcessor")


def preprocess_from_hf(cfg: dict, what: str, backend: str = "torch") -> PreprocessSpec:
    """transformers' image processor config (ViT, CLIP, Bit — DINOv2's —, SigLIP, DINOv3): resize to
    a square or the shortest edge, center crop (offset rounded down), rescale, normalize. ``backend``:
    ``"torch"`` for transformers' default since 5.25 (torchvision installed), ``"pil"`` for its PIL
    backend (earlier versions, or ``…ImageProcessorPil``). DINOv3's processor resizes the rescaled
    float image, not the uint8 one (``float_resize``, with its torch backend)."""
    kind = str(cfg.get("image_processor_type", "ViTImageProcessor")).removesuffix("Pil").removesuffix("Fast")
    if kind not in _HF_PROCESSORS:
        raise WeightsError(f"{what}: preprocessor_config.json is a {kind}; tinyvit reads {', '.join(_HF_PROCESSORS)}")
    size = cfg.get("size", {"height": 224, "width": 224})
    if isinstance(size, int):
        size = {"height": size, "width": size} if kind in _HF_SQUARE else {"shortest_edge": size}
    crops = cfg.get("do_center_crop", kind in ("CLIPImageProcessor", "BitImageProcessor"))
    crop = cfg.get("crop_size") if crops else None
    if isinstance(crop, int):
        crop = {"height": crop, "width": crop}
    short = size.get("shortest_edge")
    square = size.get("height") if size.get("height") == size.get("width") else None
    if not cfg.get("do_resize", True) or not (short or square) or (crop and crop.get("height") != crop.get("width")):
        raise WeightsError(f"{what}: preprocessor_config.json must resize to a square or a short edge (size={size})")
    resample = cfg.get("resample", 2 if kind in ("ViTImageProcessor", "DINOv3ViTImageProcessor") else 3)
    interpolation = _HF_RESAMPLE.get(resample) if isinstance(resample, int) else str(resample).lower()
    factor = cfg.get("rescale_factor", 1 / 255) if cfg.get("do_rescale", True) else 1.0
    mean = cfg.get("image_mean", [0.5] * 3) if cfg.get("do_normalize", True) else [0.0] * 3
    std = cfg.get("image_std", [0.5] * 3) if cfg.get("do_normalize", True) else [1.0] * 3
    resize = short or square
    # (x * factor - m) / s == (x - m / factor) / (s / factor): mean and std in pixel values
    try:
        return PreprocessSpec(
            resize=resize, crop=crop["height"] if crop else resize, interpolation=str(interpolation),
            mean=tuple(m / factor for m in mean), std=tuple(s / factor for s in std),
            resize_mode="short-edge" if short else "squash", crop_offset="floor", backend=backend,
            float_resize=kind == "DINOv3ViTImageProcessor" and backend == "torch",
        )  # fmt: skip
    except ValueError as e:
        raise WeightsError(f"{what}: unsupported preprocessor_config.json ({e})") from e


# facebookresearch/dinov2's make_classification_eval_transform(): short edge 256, crop 224, bicubic, ImageNet
DINOV2_EVAL = PreprocessSpec(256, 224, "bicubic", (123.675, 116.28, 103.53), (58.395, 57.12, 57.375))
# DINOv3's (dinov3.data.transforms.make_classification_eval_transform): the same, on torchvision's uint8 tensors;
# its SAT-493M weights (Meta's files *_pretrain_sat493m-*.pth) normalise with their own statistics (its README)
DINOV3_EVAL = replace(DINOV2_EVAL, backend="torch")
DINOV3_SAT_EVAL = replace(DINOV3_EVAL, mean=(109.65, 104.805, 75.48), std=(54.315, 39.78, 36.465))
_OPEN_CLIP_MODES = {"shortest": "short-edge", "squash": "squash", "longest": "longest"}


def preprocess_from_open_clip(cfg: dict, what: str) -> PreprocessSpec:
    """open_clip's ``preprocess_cfg`` (and ``vision_cfg.image_size``) → its ``image_transform``
    for evaluation: resize (``resize_mode``), center crop or pad, normalize."""
    pre = cfg.get("preprocess_cfg") or {}
    size = ((cfg.get("model_cfg") or {}).get("vision_cfg") or {}).get("image_size", 224)
    size = size[0] if isinstance(size, (list, tuple)) else size
    mode = pre.get("resize_mode", "shortest")
    if mode not in _OPEN_CLIP_MODES:
        raise WeightsError(f"{what}: open_clip resize_mode {mode!r} is not supported ({', '.join(_OPEN_CLIP_MODES)})")
    mean = pre.get("mean", (0.48145466, 0.4578275, 0.40821073))
    std = pre.get("std", (0.26862954, 0.26130258, 0.27577711))
    try:
        return PreprocessSpec(
            resize=size, crop=size, interpolation=pre.get("interpolation", "bicubic"),
            mean=tuple(255 * m for m in mean), std=tuple(255 * s for s in std), resize_mode=_OPEN_CLIP_MODES[mode],
        )  # fmt: skip
    except ValueError as e:
        raise WeightsError(f"{what}: unsupported open_clip preprocess_cfg ({e})") from e


def preprocess_from_timm(cfg: dict, what: str) -> PreprocessSpec:
    """timm's ``pretrained_cfg`` → its evaluation transform (``transforms_imagenet_eval``)."""
    pre = cfg.get("pretrained_cfg") or {}
    size = (pre.get("test_input_size") or pre.get("input_size") or [3, 224, 224])[1:]
    if size[0] != size[1]:
        raise WeightsError(f"{what}: timm input_size {size} is not square")
    crop_pct = pre.get("test_crop_pct") or pre.get("crop_pct") or 0.875
    mode = pre.get("crop_mode") or "center"
    if mode not in ("center", "squash"):
        raise WeightsError(f"{what}: timm crop_mode {mode!r} is not supported (center and squash are)")
    mean, std = pre.get("mean", (0.485, 0.456, 0.406)), pre.get("std", (0.229, 0.224, 0.225))
    try:
        return PreprocessSpec(
            resize=math.floor(size[0] / crop_pct), crop=size[0], interpolation=pre.get("interpolation") or "bicubic",
            mean=tuple(255 * m for m in mean), std=tuple(255 * s for s in std),
            resize_mode="short-edge" if mode == "center" else "squash",
        )  # fmt: skip
    except ValueError as e:
        raise WeightsError(f"{what}: unsupported timm pretrained_cfg ({e})") from e


def _categories(ckpt: Checkpoint, layout: str, config: ViTConfig, zoo: Weights | None) -> tuple[str, ...] | None:
    what = repr(str(ckpt.path))
    if ckpt.record is not None:
        return ckpt.record.categories
    if layout == "hf" and ckpt.hf_config is not None and "id2label" in ckpt.hf_config and config.num_classes:
        return labels_from_mapping(ckpt.hf_config["id2label"], f"{what} config.json id2label")
    if layout == "timm" and ckpt.timm_config is not None and ckpt.timm_config.get("label_names"):
        return parse_labels(ckpt.timm_config["label_names"])
    if ckpt.classes is not None:
        return ckpt.classes
    return zoo.categories if zoo is not None else None


def _preprocess(ckpt: Checkpoint, layout: str, zoo: Weights | None) -> PreprocessSpec | None:
    what = repr(str(ckpt.path))
    if ckpt.record is not None:
        return ckpt.record.preprocess
    if layout == "hf" and ckpt.hf_preprocessor is not None:
        return preprocess_from_hf(ckpt.hf_preprocessor, what)
    if layout == "timm" and ckpt.timm_config is not None and ckpt.timm_config.get("pretrained_cfg"):
        return preprocess_from_timm(ckpt.timm_config, what)
    if layout == "open_clip" and ckpt.open_clip_config is not None:
        return preprocess_from_open_clip(ckpt.open_clip_config, what)
    if layout == "dinov2" and "rope_embed.periods" in ckpt.tensors:  # DINOv3's own file
        return DINOV3_SAT_EVAL if "sat493m" in ckpt.path.name.lower() else DINOV3_EVAL
    if layout == "dinov2":  # its files say nothing; its evaluation transform (make_classification_eval_transform)
        return DINOV2_EVAL
    return zoo.preprocess if zoo is not None and zoo.source.layout == layout else None


def read_weights(
    src: str | os.PathLike, *, layout: str = "auto", arch: ArchArg = None
) -> tuple[dict[str, torch.Tensor], Weights]:
    """A checkpoint's tensors under tinyvit's names and its weights record, as the checkpoint and
    its side files say (not yet checked against each other: :func:`prepare` does that).

    The architecture comes from ``arch`` (a :class:`ViTConfig`; a zoo or timm architecture name,
    whose heads, eps and activation are taken with the class count and image size of the tensors;
    or the fields nothing else states, ``{"num_heads": 6}``), else from the file's own record or
    published config, else from the tensors and the library's definition — never guessed.
    """
    ckpt = read_checkpoint(src)
    what = repr(str(ckpt.path))
    if ckpt.record is None:
        timm_arch, hf_type = (ckpt.timm_config or {}).get("architecture"), (ckpt.hf_config or {}).get("model_type")
        refuse_unsupported(ckpt.tensors, what, timm_arch, hf_type)
    if layout == "auto":
        layout = ckpt.record.source.layout if ckpt.record is not None else detect_layout(ckpt.tensors)
    if layout == "open_clip" and ckpt.open_clip_config is None and (arch is None or isinstance(arch, str)):
        ckpt.open_clip_config, arch = open_clip_config_named(arch, what), None
    state, npz_heads = to_timm(ckpt.tensors, layout if ckpt.record is None else "timm")
    config = infer_config(ckpt, state, layout, npz_heads=npz_heads, arch=arch)
    zoo = zoo_weights(config, layout)
    categories = _categories(ckpt, layout, config, zoo)
    if categories is not None and len(categories) != config.num_classes:
        raise WeightsError(f"{what}: {len(categories)} class names for a head of {config.num_classes} classes")
    if ckpt.record is not None:
        return state, replace(ckpt.record, config=config)
    record = Weights(
        config=config,
        preprocess=_preprocess(ckpt, layout, zoo),
        categories=categories if config.num_classes else None,
        source=Source(kind="file", layout=layout, filename=ckpt.path.name, path=str(ckpt.path)),
        output=_output(layout, config, categories),
        size_rule=size_rule(layout, registers=config.reg_tokens > 0, pos_embed=config.use_abs_pos_emb),
    )
    return state, record


@functools.cache
def _open_clip_archs() -> dict[str, dict]:
    """open_clip's configs of its ViTs by name (open_clip_archs.json, made by
    scripts/make_open_clip_archs.py from open_clip's own model_configs)."""
    text = (resources.files("tinyvit.weights") / "open_clip_archs.json").read_text(encoding="utf-8")
    return json.loads(text)["configs"]


def open_clip_config_named(arch: str | None, what: str) -> dict:
    """The ``open_clip_config.json`` an open_clip checkpoint saved without one (open_clip's own
    ``state_dict``, a training ``epoch_N.pt``) would have had: the config of the open_clip model
    ``arch`` names, as ``create_model_and_transforms(name, pretrained=path)`` takes it."""
    configs = _open_clip_archs()
    by_lower = {name.lower(): name for name in configs}
    if arch is not None and arch.strip().lower() in by_lower:
        return configs[by_lower[arch.strip().lower()]]
    close = difflib.get_close_matches(arch or "", list(configs), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "open_clip's ViTs: ViT-B-32, ViT-B-16, ViT-L-14, …"
    given = f"{arch!r} is not one of open_clip's ViT model names; " if arch is not None else ""
    raise WeightsError(
        f"{what}: an open_clip checkpoint without its open_clip_config.json (open_clip's state_dict, a training "
        f"checkpoint such as epoch_N.pt) needs the open_clip model name it was made with: {given}pass "
        f"arch='ViT-B-32' (CLI: --arch ViT-B-32), as create_model_and_transforms takes it; {hint}"
    )


def _output(layout: str, config: ViTConfig, categories: tuple[str, ...] | None) -> str:
    """What the model gives: class logits, or an image embedding (no head; a bias-free projection
    head as CLIP's; a timm CLIP image tower, whose head projects and names no classes)."""
    if categories is not None and config.num_classes:
        return "classes"
    if not config.num_classes or not config.head_bias or (layout == "timm" and config.pre_norm):
        return "embedding"
    if layout == "open_clip":  # encode_image: open_clip's image towers give embeddings, whatever their head
        return "embedding"
    return "classes"


def with_overrides(
    record: Weights, *, labels: LabelsArg = None, preprocess: PreprocessSpec | None = None, what: str = ""
) -> Weights:
    """The record with what the user states instead of the checkpoint: class names (``labels``:
    a list, a file, ``"imagenet-1k"``; they make the model a classifier) and the preprocessing."""
    if labels is not None:
        if record.output == "embedding" and not record.config.head_bias:  # a projection (CLIP's): no classes
            raise WeightsError(
                f"{what or record.spec}: an image embedding model (its head is a projection, without bias) gives "
                "embeddings, not classes, and takes no class names; embed images with it, or fit a classifier on it"
            )
        categories = parse_labels(labels)
        if len(categories) != record.config.num_classes:
            head = record.config.num_classes
            raise WeightsError(f"{what or record.spec}: {len(categories)} class names for a head of {head} classes")
        record = replace(record, categories=categories, output="classes")
    return record.with_overrides(preprocess=preprocess)


# ---------------------------------------------------------------------------------------------
# The one conversion step


def prepare(
    fetched: Fetched, *, layout: str = "auto", arch: ArchArg = None
) -> tuple[dict[str, torch.Tensor], Weights]:
    """A fetched checkpoint's tensors under tinyvit's names and its record, checked against each
    other (see the module docstring: read in place, converted in memory, or converted once into the
    cache). Zoo weights take the manifest's record and architecture; others what their files say
    and ``arch``."""
    zoo = fetched.record
    if zoo is not None and zoo.source.layout == "timm":  # the zoo's own file: tinyvit's names, the manifest's record
        return read_tensors(fetched.path), zoo
    if zoo is not None:
        layout, arch = zoo.source.layout, zoo.config
    dst = None if fetched.key is None else _converted(fetched.key, zoo, arch, layout)
    if dst is not None and (hit := _read_converted(dst)) is not None:
        return hit
    state, record = read_weights(fetched.path, layout=layout, arch=arch)
    if zoo is not None:
        record = replace(zoo, config=record.config)
    elif fetched.origin:
        record = replace(record, source=replace(record.source, **fetched.origin))
    if dst is not None and (record.source.layout != "timm" or fetched.temporary):
        # checked before it is kept (read in memory, the tensors are checked where the model is built)
        check_state_dict(record.config, state, f"{str(fetched.path)!r} ({record.source.layout} layout)")
        save(dst, state, record)  # atomic: a reader sees no file or the whole file
        record = replace(record, source=replace(record.source, path=str(dst)))
    return state, record


def cached(key: str, zoo: Weights | None, arch: ArchArg) -> tuple[dict[str, torch.Tensor], Weights] | None:
    """What :func:`prepare` made of the content ``key`` before (for zoo weights ``zoo``, or with the
    stated ``arch``), or None."""
    return _read_converted(_converted(key, zoo, arch, "auto"))


def _converted(key: str, zoo: Weights | None, arch: ArchArg, layout: str) -> Path:
    """Where conversion keeps a content key's tinyvit file: zoo weights by the manifest's
    architecture and layout, others by the stated ``arch`` and ``layout``."""
    if zoo is not None:
        return converted_path(key, zoo.config.to_dict(), zoo.source.layout)
    return converted_path(key, arch.to_dict() if isinstance(arch, ViTConfig) else arch, layout)


def _read_converted(path: Path) -> tuple[dict[str, torch.Tensor], Weights] | None:
    """What conversion wrote earlier (checked before it was written), or None when it is not
    there. A file that cannot be read any more (a full disk, a crash of the disk) is removed, and
    the error says so: the next load converts afresh."""
    if not path.is_file():
        return None
    try:
        record = read_record(path, read_header(path))
        if record is None:
            raise WeightsError(f"{str(path)!r}: not a tinyvit file")
        return read_tensors(path), record
    except WeightsError as e:
        path.unlink(missing_ok=True)
        raise WeightsError(f"{e}; the cached file was removed, load again to fetch it afresh") from e


def prepare_text(
    fetched: Fetched, *, arch: ArchArg = None
) -> tuple[dict[str, torch.Tensor], TextTower, Path, dict | None]:
    """The text tower beside a fetched CLIP / SigLIP image tower — the text half of :func:`prepare`:
    its tensors under tinyvit's names, checked against its config (``open_clip_config.json``'s
    ``text_cfg``, or the config of the open_clip model ``arch`` names; transformers'
    ``text_config``), its record, the folder its tokenizer files are in, and the open_clip config
    (None for a transformers checkpoint), which says how open_clip tokenizes. Read in place on every
    load (text towers are small)."""
    from tinyvit.models.text import check_text_state_dict  # the text side: imported when text is asked for
    from tinyvit.weights.text_layouts import (
        detect_text_layout,
        text_config_from_hf,
        text_config_from_open_clip,
        text_state,
    )

    what = repr(str(fetched.path))
    if fetched.record is not None:  # load_text fetches a zoo entry's text tower (record.text) instead
        raise WeightsError(f"{fetched.record.spec}: the zoo's file holds the image tower only")
    ckpt = read_checkpoint(fetched.path)
    layout = detect_text_layout(ckpt.tensors)
    if layout is None:
        raise WeightsError(
            f"{what}: no text tower in this checkpoint (an image model, or a CLIP / SigLIP image tower saved "
            "alone); text and zero-shot classes need both towers: an open_clip folder or a transformers "
            "CLIPModel / SiglipModel"
        )
    state, logits = text_state(ckpt.tensors, layout, what=what)
    open_clip_config = None
    if layout == "hf":
        if ckpt.hf_config is None:
            raise WeightsError(f"{what}: a transformers text tower needs its config.json beside it")
        config = text_config_from_hf(ckpt.hf_config, what=f"{what} config.json")
    else:
        open_clip_config = ckpt.open_clip_config  # else open_clip's own save: its model name says the config
        if open_clip_config is None:
            open_clip_config = open_clip_config_named(arch if isinstance(arch, str) else None, what)
        config = text_config_from_open_clip(open_clip_config, what=f"{what} open_clip_config.json")
    check_text_state_dict(config, state, f"{what} (text tower, {layout} layout)")
    tower = TextTower(config, logits.get("logit_scale"), logits.get("logit_bias"), tokenizer="")
    return state, tower, fetched.path if fetched.path.is_dir() else fetched.path.parent, open_clip_config


# ---------------------------------------------------------------------------------------------
# Writing


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    layout: str = "auto",
    arch: ArchArg = None,
    labels: LabelsArg = None,
    preprocess: PreprocessSpec | None = None,
) -> Path:
    """Convert a timm / Hugging Face / mmpretrain / JAX / open_clip / DINOv2 checkpoint to a tinyvit
    safetensors file, whose header carries the weights record, so ``tinyvit.load(dst)`` needs
    nothing else.

    ``arch``: see :func:`read_weights`; ``labels`` and ``preprocess`` state what the checkpoint
    does not say, or override it. The record's source keeps the original file's name, layout and
    SHA-256.
    """
    dst = Path(dst)
    if dst.is_dir():
        raise WeightsError(f"{str(dst)!r} is a folder; give the output file's path")
    if dst.suffix != ".safetensors":
        raise WeightsError(f"{str(dst)!r}: the output is a safetensors file; name it *.safetensors")
    state, record = prepare(Fetched(Path(src)), layout=layout, arch=arch)
    if record.fit is None or not record.fit.head_only:  # checked before it is written (a head alone: with its base)
        check_state_dict(record.config, state, f"{str(src)!r} ({record.source.layout} layout)")
    record = with_overrides(record, labels=labels, preprocess=preprocess, what=repr(str(src)))
    source = record.source
    if source.kind == "file" and source.sha256 is None:
        weights_file = weights_file_of(Path(src))
        if weights_file is not None:
            source = replace(source, sha256=sha256_file(weights_file))
    return save(dst, state, replace(record, source=source))
