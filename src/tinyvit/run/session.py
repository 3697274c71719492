"""A model and how to run it, assembled once from the options: the runner that ``predict``,
``embed``, ``eval``, the server and Ray run images through.

:func:`runner_for` loads (or takes) the image model as the options say, and — when the options name
classes in words — the head that scores them with the checkpoint's text tower; the preprocessing
of the options applies to this run (a loaded model's too).
"""

from __future__ import annotations

import os
from dataclasses import replace

import torch

from tinyvit.core.errors import TinyViTError
from tinyvit.models.vit import VisionTransformer
from tinyvit.run.options import ModelOptions
from tinyvit.run.runner import Runner
from tinyvit.run.runtime import model_for
from tinyvit.weights.specs import ModelSpec

__all__ = ["runner_for"]


def runner_for(
    model: str | os.PathLike | ModelSpec | VisionTransformer,
    options: ModelOptions | None = None,
    *,
    task: str = "classify",
    top_k: int = 5,
    normalize: bool = False,
    progress: bool = False,
) -> Runner:
    """The runner of ``model`` as ``options`` say: ``task`` ``"classify"`` or ``"embed"``; with
    ``options.classes``, classification by the text tower's embeddings of the class names
    (zero-shot; ``progress``: a bar while a new class set is embedded)."""
    o = options or ModelOptions()
    encoder = head = None
    if o.classes is not None:
        from tinyvit.run.zeroshot import text_encoder_for  # the text side: imported when classes are asked for

        if task != "classify":
            raise TinyViTError("classes= name what to classify into; embeddings need none")
        if not isinstance(model, torch.nn.Module):  # first: a model without a text tower is refused before
            encoder = text_encoder_for(model, o)  # its image tower is fetched
    net = model_for(model, replace(o, preprocess=None, classes=None, templates=None))
    if o.classes is not None:
        from tinyvit.run.zeroshot import class_names, templates_of, text_encoder_for, zero_shot_head

        encoder = encoder or text_encoder_for(net, o)
        head = zero_shot_head(encoder, class_names(o.classes), templates_of(o.templates), progress=progress)
    return Runner(net, task=task, top_k=top_k, normalize=normalize, preprocess=o.preprocess, fast=o.fast, head=head)
