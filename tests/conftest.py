"""Shared test helpers: the reference fixtures and the checkpoints the parity tests write."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import refdata  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"

torch.set_num_threads(min(2, torch.get_num_threads()))


def load_parity() -> tuple[dict, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    return json.loads((FIXTURES / "parity.json").read_text()), load_file(FIXTURES / "parity.safetensors")


@pytest.fixture(scope="session")
def parity():
    return load_parity()


def small_config(meta: dict):
    from tinyvit import ViTConfig

    s = meta["small"]
    return ViTConfig(
        image_size=s["image_size"],
        patch_size=s["patch_size"],
        embed_dim=s["embed_dim"],
        depth=s["depth"],
        num_heads=s["num_heads"],
        mlp_ratio=s["mlp_dim"] / s["embed_dim"],
        num_classes=s["num_classes"],
    )


def case_state(case: dict) -> dict[str, torch.Tensor]:
    """The case's weights, under the reference library's own parameter names."""
    return {k: torch.from_numpy(refdata.fill(k, shape)) for k, shape in case["keys"].items()}


def case_input(spec: dict) -> torch.Tensor:
    return torch.from_numpy(refdata.make_input(spec["name"], spec["shape"]))


def write_checkpoint(name: str, case: dict, folder: Path) -> Path:
    """Write the case's weights the way its library stores them; returns what to convert."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    layout = case["layout"]
    if layout == "timm":
        path = folder / f"{name}.safetensors"
        save_file(case_state(case), str(path))
        return path
    if layout == "hf":
        (folder / "config.json").write_text(json.dumps(case["hf_config"]))
        if name.startswith("hf5"):  # in-memory names, as torch.save(model.state_dict()) writes them
            path = folder / "state_dict.pth"
            torch.save(case_state(case), path)
            return path
        save_file(case_state(case), str(folder / "model.safetensors"), metadata={"format": "pt"})
        return folder  # a save_pretrained folder
    if layout == "mmpretrain":
        path = folder / f"{name}.pth"
        torch.save({"meta": {"mmpretrain_version": "1.2.0", "epoch": 1}, "state_dict": case_state(case)}, path)
        return path
    if layout == "npz":
        path = folder / f"{name}.npz"
        np.savez(path, **{k: refdata.fill(k, s) for k, s in case["keys"].items()})
        return path
    raise AssertionError(layout)


def mm_small_pth(folder: Path) -> bytes:
    """The small mmpretrain case as the bytes of a .pth checkpoint ({'meta', 'state_dict'})."""
    path = folder / "mm_small.pth"
    torch.save({"meta": {"epoch": 1}, "state_dict": case_state(load_parity()[0]["cases"]["mm_small"])}, path)
    return path.read_bytes()


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> Path:
    """A full-size vit-base-p32-384 tinyvit file: the timm fixture's weights, converted (ImageNet
    classes, timm's preprocessing). Shared by the tests that run images end to end."""
    import tinyvit

    folder = tmp_path_factory.mktemp("b32")
    src = write_checkpoint("timm_b32_384", load_parity()[0]["cases"]["timm_b32_384"], folder / "src")
    return tinyvit.convert(src, folder / "b32.safetensors")
