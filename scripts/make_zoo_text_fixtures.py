"""Generate tests/fixtures/zoo_text.{json,safetensors} (issue #30: the zoo's CLIP / SigLIP entries
gain their text towers). Run in the reference venv (see scripts/make_family_fixtures.py):

    .refs/bin/python scripts/make_zoo_text_fixtures.py

Two things, both from open_clip itself:

* ``registry``: open_clip's pretrained registry — for every (model name, tag) whose model is one of
  open_clip's ViTs, the Hub repository ``download_pretrained`` fetches it from. The manifest's
  ``text`` sources must name a repository this registry gives for their open_clip model
  (tests/test_zoo_text.py checks it): nothing in them is typed in from memory.
* ``named``: the text tower of open_clip's ``ViT-S-32-alt`` (the smallest ViT text tower in the
  registry) with refdata's deterministic weights, and ``encode_text`` of a few prompts through
  ``get_tokenizer("ViT-S-32-alt")``: what a zoo text tower saved by open_clip without an
  ``open_clip_config.json`` (only the model name says its config) must give.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import open_clip
import torch
from open_clip.pretrained import get_pretrained_cfg
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from refdata import fill  # noqa: E402

OUT = ROOT / "tests" / "fixtures"
NAMED = "ViT-S-32-alt"
PROMPTS = ["a photo of a cat.", "a photo of a dog.", "A Red Car, parked.", "", "café — naïve façade 🚗",
           "itap of my {}!"]  # fmt: skip


def registry() -> dict[str, str]:
    archs = json.loads((ROOT / "src" / "tinyvit" / "weights" / "open_clip_archs.json").read_text())["configs"]
    out = {}
    for name, tag in open_clip.list_pretrained():
        if name in archs and (hub := get_pretrained_cfg(name, tag).get("hf_hub")):
            out[f"{name}/{tag}"] = hub
    return out


def named() -> tuple[dict, dict[str, torch.Tensor]]:
    model = open_clip.create_model(NAMED).eval()
    state = model.state_dict()
    keys = {k: list(v.shape) for k, v in state.items() if not k.startswith("visual.")}
    filled = {k: torch.from_numpy(np.asarray(fill(k, shape))) for k, shape in keys.items()}
    missing, unexpected = model.load_state_dict(filled, strict=False)
    assert not unexpected and all(k.startswith("visual.") for k in missing), (missing, unexpected)
    tokenizer = open_clip.get_tokenizer(NAMED)
    ids = tokenizer(PROMPTS)
    with torch.no_grad():
        features = model.encode_text(ids, normalize=False)
    assert torch.isfinite(features).all() and not torch.equal(features[0], features[1])
    case = {
        "model": NAMED, "keys": keys, "prompts": PROMPTS, "text_ids": ids.tolist(),
        "logit_scale": float(filled["logit_scale"]),
        "text_features": {"key": "named/text_features", "shape": list(features.shape),
                          "call": "model.encode_text(get_tokenizer(model_name)(prompts), normalize=False)",
                          "max_abs": float(features.abs().max())},
    }  # fmt: skip
    return case, {"named/text_features": features.contiguous()}


def main() -> None:
    case, tensors = named()
    doc = {
        "made_by": "scripts/make_zoo_text_fixtures.py",
        "open_clip": open_clip.__version__, "torch": torch.__version__,
        "registry": registry(), "named": case,
    }  # fmt: skip
    (OUT / "zoo_text.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    save_file(tensors, str(OUT / "zoo_text.safetensors"))
    print(f"wrote {OUT / 'zoo_text.json'}: {len(doc['registry'])} registry entries, {len(case['keys'])} text keys")


if __name__ == "__main__":
    main()
