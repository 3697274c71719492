"""Shared test helpers: the reference fixtures and the checkpoints the parity tests write."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import traceback
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import refdata  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"

torch.set_num_threads(min(2, torch.get_num_threads()))


def small_vit_file(folder: Path, num_classes: int = 10, seed: int = 0) -> Path:
    """A small random ViT (32 px, patch 8, 64 wide, 2 blocks) with named classes and a stated
    preprocessing, saved in timm's layout and converted as a user's checkpoint would be: for tests
    about how images flow, where the model's size only costs time."""
    from safetensors.torch import save_file

    import tinyvit

    config = tinyvit.ViTConfig(image_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=num_classes)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        save_file(tinyvit.VisionTransformer(config).init_weights().state_dict(), str(folder / "timm.safetensors"))
    spec = tinyvit.PreprocessSpec(resize=36, crop=32, interpolation="bicubic", mean=(127.5,) * 3, std=(127.5,) * 3)
    labels = [f"thing {i}" for i in range(num_classes)]
    return tinyvit.convert(folder / "timm.safetensors", folder / "small.safetensors", arch=config, labels=labels,
                           preprocess=spec)  # fmt: skip


def readme_block(name: str) -> str:
    """The README's text between ``<!-- name:start -->`` and ``<!-- name:end -->``."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start, end = f"<!-- {name}:start -->\n", f"<!-- {name}:end -->"
    assert start in text and end in text, f"README lacks the {name} block"
    return text.split(start, 1)[1].split(end, 1)[0].strip()


class Ran(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


class _Stream(io.StringIO):
    def __init__(self, terminal: bool):
        super().__init__()
        self.terminal = terminal

    def isatty(self) -> bool:
        return self.terminal


def cli(
    *args: str | os.PathLike, env: dict | None = None, cwd: Path | None = None, timeout: float = 300,
    terminal: bool = False,
) -> Ran:  # fmt: skip
    """``tinyvit ARGS``: in this process (an interpreter start and torch's import, ~4 s, saved per
    call), or in a new ``python -m tinyvit`` where ``env`` or ``cwd`` is given: settings read at
    import (``HF_ENDPOINT``, ``HF_HUB_OFFLINE``) need a fresh process. An exception that escapes
    (``--debug``) is printed as the interpreter would, exit code 1. ``terminal``: stderr says it is
    a terminal (progress bars are drawn only there)."""
    if env is not None or cwd is not None:
        out = subprocess.run(
            [sys.executable, "-m", "tinyvit", *map(str, args)],
            capture_output=True, text=True, cwd=cwd, env={**os.environ, **(env or {})}, timeout=timeout,
        )  # fmt: skip
        return Ran(out.returncode, out.stdout, out.stderr)
    from tinyvit.deploy.cli import main

    stdout, stderr = io.StringIO(), _Stream(terminal)
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse's usage errors
            code = e.code if isinstance(e.code, int) else 1
        except Exception:
            traceback.print_exc()
            code = 1
    return Ran(code, stdout.getvalue(), stderr.getvalue())




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
    return tinyvit.convert(src, folder / "b32.safetensors", arch="vit_base_patch32_384")  # a bare timm state dict


def mapped_ranges(path) -> list[tuple[int, int]]:
    """The address ranges of this process's memory mappings of the file ``path`` (Linux)."""
    ranges = []
    with open("/proc/self/maps") as f:
        for line in f:
            if line.rstrip().endswith(str(path)):
                start, end = (int(a, 16) for a in line.split()[0].split("-"))
                ranges.append((start, end))
    return ranges
