"""Generate tests/fixtures/names.json: what timm and mmpretrain call the zoo's weights.

For every weight in weights_manifest.json, asks the reference libraries themselves which of
their model names load exactly those weights: mmpretrain's model names whose checkpoint URL is
the manifest's URL, and timm's ``architecture.tag`` names whose ``hf_hub_id`` is the manifest's
Hub repository (plus timm's bare architecture name, which means its default tag). The tests
check that each of these names resolves, in tinyvit, to those same weights. Run it in the
reference environment (see scripts/make_fixtures.py):

    .refs/bin/python scripts/make_names_fixture.py
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "names.json"


def main() -> None:
    import mmpretrain
    import timm
    from mmpretrain import list_models
    from mmpretrain.apis.model import ModelHub
    from timm.models import get_pretrained_cfg

    manifest = json.loads((ROOT / "weights_manifest.json").read_text())
    urls = {s["url"] for m in manifest["models"].values() for s in m["sources"] if s["kind"] == "url"}
    repos = {s["repo_id"] for m in manifest["models"].values() for s in m["sources"] if s["kind"] == "hub"}

    mm = {}
    for name in list_models("vit-*"):
        url = ModelHub.get(name).weights
        if url in urls:
            mm[name] = url

    timm_names, timm_default = {}, {}
    archs = {r.split("/", 1)[1].split(".")[0] for r in repos if r.startswith("timm/")}
    for arch in sorted(archs):
        for name in timm.list_pretrained(arch + ".*"):
            hub_id = get_pretrained_cfg(name).hf_hub_id
            if hub_id in repos:
                timm_names[name] = hub_id
        default = get_pretrained_cfg(arch)  # the bare name: timm's default weights for it
        timm_default[arch] = default.hf_hub_id
    out = {
        "generated_by": "scripts/make_names_fixture.py",
        "versions": {"timm": timm.__version__, "mmpretrain": mmpretrain.__version__},
        "mmpretrain": dict(sorted(mm.items())),
        "timm": dict(sorted(timm_names.items())),
        "timm_default": timm_default,
    }
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
