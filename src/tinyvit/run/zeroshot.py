"""The text side of CLIP and SigLIP: text embeddings and classes named in words (zero-shot).

:class:`TextEncoder` tokenizes texts as the checkpoint's home library does and runs its text tower
(open_clip's ``encode_text``, transformers' ``get_text_features``); the encoders a process uses are
kept loaded, like the image models (``run/runtime.py``). :func:`zero_shot_head` turns class names and
prompt templates into the :class:`~tinyvit.run.runner.ZeroShotHead` the runner scores with: each
class's prompts embedded, unit-normalized, averaged and normalized again (open_clip's
``build_zero_shot_classifier``). A class set is computed once and kept on disk, keyed by the
checkpoint, the classes and the templates: ImageNet's 1,000 classes × 80 templates are 80,000
prompts — minutes on a CPU the first time, an instant after.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import json
import os
import threading
import warnings
from collections.abc import Sequence
from importlib import resources

import torch

from tinyvit.core.errors import TinyViTError
from tinyvit.core.fsutil import atomic_path
from tinyvit.models.text import TextTransformer
from tinyvit.models.vit import VisionTransformer
from tinyvit.run.cpu import apply_cpu_path
from tinyvit.run.options import ModelOptions
from tinyvit.run.runner import ZeroShotHead
from tinyvit.run.runtime import MODEL_CACHE_SIZE, parse_device, parse_dtype
from tinyvit.text.tokenize import Tokenizer
from tinyvit.weights._builder import load_text
from tinyvit.weights._hub import cache_dir
from tinyvit.weights.record import TextTower
from tinyvit.weights.specs import ModelSpec, parse_spec

__all__ = ["DEFAULT_TEMPLATE", "TextEncoder", "class_names", "templates_of", "text_encoder_for", "zero_shot_head"]

DEFAULT_TEMPLATE = "This is a photo of {}."  # transformers' zero-shot-image-classification pipeline's
TEXT_BATCH = 256  # prompts per forward pass of the text tower


@functools.cache
def imagenet_zeroshot() -> dict:
    """open_clip's ImageNet class names and templates (text/imagenet_zeroshot.json, with its source)."""
    return json.loads((resources.files("tinyvit.text") / "imagenet_zeroshot.json").read_text(encoding="utf-8"))


def class_names(classes: str | Sequence[str]) -> tuple[str, ...]:
    """``"imagenet"`` (open_clip's names of ImageNet's 1,000 classes) or the names themselves."""
    if isinstance(classes, str):
        if classes.lower() == "imagenet":
            return tuple(imagenet_zeroshot()["classnames"])
        raise TinyViTError(f"classes {classes!r}: give a list of class names, or 'imagenet'")
    names = tuple(classes)
    if not names:
        raise TinyViTError("classes: no class names")
    if len(set(names)) != len(names):
        raise TinyViTError(f"classes: {next(n for n in names if names.count(n) > 1)!r} is named twice")
    return names


def templates_of(templates: str | Sequence[str] | None) -> tuple[str, ...]:
    """None → transformers' default template; ``"openai"`` / ``"simple"`` → open_clip's ImageNet
    templates; one template (with ``{}`` where the class name goes) or a list of them."""
    if templates is None:
        return (DEFAULT_TEMPLATE,)
    if isinstance(templates, str) and templates.lower() in ("openai", "simple"):
        return tuple(imagenet_zeroshot()[f"{templates.lower()}_templates"])
    out = (templates,) if isinstance(templates, str) else tuple(templates)
    bad = [t for t in out if "{}" not in t]
    if not out or bad:
        raise TinyViTError(f"template {bad[0] if bad else ''!r}: a template holds {{}} where the class name goes, "
                           "or is one of openai, simple")  # fmt: skip
    return out


class TextEncoder:
    """Texts → text embeddings (N, E) float32, as the home library computes them."""

    def __init__(self, model: TextTransformer, tokenizer: Tokenizer, tower: TextTower, spec: str):
        self.model, self.tokenizer, self.tower, self.spec = model, tokenizer, tower, spec
        self.device = next(model.parameters()).device

    def __call__(self, texts: Sequence[str], *, normalize: bool = False, batch_size: int = TEXT_BATCH,
                 progress: object = None) -> torch.Tensor:  # fmt: skip
        """(N, E) float32 for the N texts, ``batch_size`` at a time; ``progress``: a tqdm-like bar."""
        out = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer.batch(list(texts[start : start + batch_size]))
            mask = batch.attention_mask.to(self.device) if self.tokenizer.uses_attention_mask else None
            with torch.inference_mode():
                out.append(self.model(batch.ids.to(self.device), mask).float().cpu())
            if progress is not None:
                progress.update(len(batch.ids))
        if not out:
            return torch.zeros(0, self.tower.config.output_dim)
        feats = torch.cat(out)
        return torch.nn.functional.normalize(feats, dim=-1) if normalize else feats


_ENCODERS: collections.OrderedDict[tuple, TextEncoder] = collections.OrderedDict()
_ENCODERS_LOCK = threading.Lock()


def text_encoder_for(model: str | os.PathLike | ModelSpec | VisionTransformer, options: ModelOptions | None = None
                     ) -> TextEncoder:  # fmt: skip
    """The text side of ``model`` (a spec, or a loaded image tower: the checkpoint it came from),
    loaded once per process per (spec, device, dtype)."""
    o = options or ModelOptions()
    if isinstance(model, torch.nn.Module):
        record = getattr(model, "weights", None)
        spec = record.reload_spec if record is not None else None
        if spec is None:
            raise TinyViTError("this model was not loaded from a checkpoint tinyvit can read again: no text tower")
        if o.device is None:
            o = ModelOptions.of(o, device=str(next(model.parameters()).device))
    else:
        spec = model
    parsed, device, dtype = parse_spec(spec), parse_device(o.device), parse_dtype(o.dtype)
    key = (parsed, str(device), str(dtype), o.arch, o.exact)
    with _ENCODERS_LOCK:
        encoder = _ENCODERS.get(key)
        if encoder is None:
            text_model, tokenizer, tower = load_text(parsed, device=device, dtype=dtype, arch=o.arch_arg)
            apply_cpu_path(text_model, exact=o.exact, after=1)  # the image models' GEMM path (run/cpu.py)
            encoder = _ENCODERS[key] = TextEncoder(text_model, tokenizer, tower, str(parsed))
            while len(_ENCODERS) > MODEL_CACHE_SIZE:
                _ENCODERS.popitem(last=False)
        _ENCODERS.move_to_end(key)
        return encoder


def zero_shot_head(encoder: TextEncoder, classes: Sequence[str], templates: Sequence[str], *,
                   progress: bool = False) -> ZeroShotHead:  # fmt: skip
    """The head that scores ``classes`` (each in every template), from the disk cache when this
    checkpoint has computed this class set before."""
    tower = encoder.tower
    if tower.logit_scale is None:
        raise TinyViTError(f"{encoder.spec}: the checkpoint has no logit_scale, so its class scores are not defined")
    names, templates = tuple(classes), tuple(templates)
    ident = json.dumps([tower.identity, tower.config.to_dict(), tower.tokenizer, names, templates], sort_keys=True)
    path = cache_dir() / "zeroshot" / (hashlib.sha256(ident.encode()).hexdigest()[:32] + ".safetensors")
    weight = _read_cached(path)
    if weight is None or weight.shape[0] != len(names):
        weight = _class_embeddings(encoder, names, templates, progress)
        _write_cached(path, weight)
    return ZeroShotHead(names, weight, float(torch.tensor(tower.logit_scale).exp()), tower.logit_bias)


def _class_embeddings(encoder: TextEncoder, names: tuple[str, ...], templates: tuple[str, ...],
                      progress: bool) -> torch.Tensor:  # fmt: skip
    """(C, E): per class, the unit mean of its prompts' unit text embeddings."""
    prompts = [t.format(name) for name in names for t in templates]
    bar = None
    if progress and len(prompts) > TEXT_BATCH:
        from huggingface_hub.utils import tqdm

        bar = tqdm(total=len(prompts), unit="prompt", desc="classes")
    try:
        e = encoder(prompts, normalize=True, progress=bar)  # (C * T, E)
    finally:
        if bar is not None:
            bar.close()
    return torch.nn.functional.normalize(e.reshape(len(names), len(templates), -1).mean(dim=1), dim=-1)


def _read_cached(path) -> torch.Tensor | None:
    if not path.is_file():
        return None
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))["weight"]
    except (SafetensorError, OSError, KeyError):
        path.unlink(missing_ok=True)  # a damaged cache file: computed again below
        return None


def _write_cached(path, weight: torch.Tensor) -> None:
    from safetensors.torch import save_file

    try:
        with atomic_path(path, suffix=".safetensors") as tmp:
            save_file({"weight": weight.contiguous()}, str(tmp))
    except OSError as e:  # a read-only cache: the head is computed again next time
        warnings.warn(f"tinyvit: cannot keep the class embeddings in {path.parent} ({e})", stacklevel=3)
