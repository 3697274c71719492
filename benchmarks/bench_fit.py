"""``tinyvit fit`` on real photos: its probe against scikit-learn's, and its time against ``tinyvit embed``.

    .venv/bin/python benchmarks/bench_fit.py                 # CPU, a few minutes
    .venv/bin/python benchmarks/bench_fit.py --device cuda --train 64 --test 32

The classes are scikit-image's photos (``skimage.data``: chelsea, coffee, astronaut, rocket); each
image is an augmented view of one (a random crop of 30-100 % of its area, a flip, brightness,
contrast and saturation within 40 %), written as a JPEG; the test views are drawn apart from the
training views. The base is a zoo-shaped ViT (``--model``) with random weights written locally (no
Hub): random-weight features still tell distinct photos apart, and speed does not depend on the
values. Reported:

* held-out accuracy on the test views of: ``tinyvit fit`` (C chosen by 5-fold cross-validation on
  the training views, as it does without ``--val``; the written file predicts the test views), and
  scikit-learn's ``LogisticRegression`` (default C = 1; and ``LogisticRegressionCV`` over the same
  grid and folds) on the same tinyvit embeddings, standardized;
* the wall time of ``tinyvit fit TRAIN`` against ``tinyvit embed TRAIN`` (both in-process, the
  model loaded once, alternating rounds; ratio = median of per-round ratios), and of fitting again
  with the embeddings from ``--cache``.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

sys.path.insert(0, str(Path(__file__).parent))
from bench_pipeline import make_weights  # noqa: E402  (this folder: zoo-shaped random weights)
from bench_ray import machine_line  # noqa: E402

import tinyvit  # noqa: E402
from tinyvit.deploy.cli import main as cli  # noqa: E402
from tinyvit.run.probe import GRID, MAX_FOLDS  # noqa: E402

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")


def photos() -> dict[str, Image.Image]:
    from skimage import data

    return {name: Image.fromarray(getattr(data, name)()).convert("RGB") for name in PHOTOS}


def view(img: Image.Image, rng: random.Random, size: tuple[int, int]) -> Image.Image:
    """A random crop (30-100 % of the area, aspect 3/4-4/3), a flip, colour jitter within 40 %."""
    area = img.width * img.height * rng.uniform(0.3, 1.0)
    aspect = rng.uniform(3 / 4, 4 / 3)
    w, h = min(img.width, int((area * aspect) ** 0.5)), min(img.height, int((area / aspect) ** 0.5))
    x, y = rng.randint(0, img.width - w), rng.randint(0, img.height - h)
    v = img.crop((x, y, x + w, y + h)).resize(size, Image.Resampling.BICUBIC)
    if rng.random() < 0.5:
        v = v.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        v = enhance(v).enhance(rng.uniform(0.6, 1.4))
    return v


def make_sets(root: Path, train: int, test: int, seed: int) -> tuple[Path, Path]:
    rng = random.Random(seed)
    for name, img in photos().items():
        for split, n in (("train", train), ("test", test)):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                view(img, rng, (384, 288)).save(folder / f"{i:03d}.jpg", quality=90)
    return root / "train", root / "test"


def labelled(folder: Path) -> tuple[list[Path], np.ndarray]:
    files = sorted(folder.rglob("*.jpg"))
    return files, np.array([PHOTOS.index(f.parent.name) for f in files])


def sklearn_probes(weights: Path, train: Path, test: Path, seed: int) -> dict[str, tuple[float, float]]:
    """name → (accuracy on the test views in percent, fit seconds) of scikit-learn's probes on
    tinyvit's embeddings."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    (tf, ty), (vf, vy) = labelled(train), labelled(test)
    x, vx = tinyvit.embed(tf, weights).numpy(), tinyvit.embed(vf, weights).numpy()
    folds = StratifiedKFold(MAX_FOLDS, shuffle=True, random_state=seed)
    probes = {
        "scikit-learn `LogisticRegression()` (C = 1)": LogisticRegression(max_iter=1000),
        "scikit-learn `LogisticRegressionCV` (the same grid, 5 folds, balanced)": LogisticRegressionCV(
            Cs=list(GRID), cv=folds, class_weight="balanced", max_iter=1000, scoring="accuracy"),
    }  # fmt: skip
    warnings.simplefilter("ignore", FutureWarning)  # LogisticRegressionCV's coming changes of defaults
    out = {}
    for name, probe in probes.items():
        start = time.perf_counter()
        model = make_pipeline(StandardScaler(), probe).fit(x, ty)
        out[name] = (100 * float((model.predict(vx) == vy).mean()), time.perf_counter() - start)
    return out


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    assert cli(argv) == 0, argv
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="vit-base-p32-384", help="zoo architecture (random weights)")
    parser.add_argument("--train", type=int, default=24, help="training views per class")
    parser.add_argument("--test", type=int, default=16, help="test views per class")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="tinyvit-bench-fit-"))
    weights = make_weights(tmp, args.model)
    train, test = make_sets(tmp / "data", args.train, args.test, args.seed)
    common = ["--model", str(weights), "--device", args.device]
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

    times: dict[str, list[float]] = {"embed": [], "fit": []}
    timed(["fit", str(train), "-o", str(tmp / "warm.safetensors"), "--json", *common])  # loads the model once
    for _ in range(args.rounds):
        times["embed"].append(timed(["embed", str(train), "-o", str(tmp / "feats.safetensors"), *common]))
        times["fit"].append(timed(["fit", str(train), "-o", str(tmp / "fit.safetensors"), "--json", *common]))
    ratio = statistics.median(f / e for e, f in zip(times["embed"], times["fit"], strict=True))
    cached = ["fit", str(train), "-o", str(tmp / "cached.safetensors"), "--cache", "--json", *common]
    timed(cached)
    again = timed(cached)

    files, _ = labelled(test)
    preds = tinyvit.predict(files, tmp / "fit.safetensors", device=args.device)
    ours = 100 * float(np.mean([p.name == f.parent.name for p, f in zip(preds, files, strict=True)]))
    record = tinyvit.load(tmp / "fit.safetensors").weights.fit
    references = sklearn_probes(weights, train, test, args.seed)

    n = len(PHOTOS) * args.train
    print(machine_line("scikit-learn"))
    print(f"\n{args.model} (random weights), {len(PHOTOS)} classes of augmented views of scikit-image's photos "
          f"({', '.join(PHOTOS)}): {args.train} training and {args.test} test views per class, 384x288 JPEGs; "
          f"times: median of {args.rounds} alternating rounds\n")  # fmt: skip
    print("| probe on tinyvit's embeddings | accuracy on the test views | time |")
    print("|---|---:|---|")
    print(f"| `tinyvit fit` (C = {record.regularization:g} by 5-fold CV on the training views: "
          f"{record.accuracy:.1f}%) | {ours:.1f}% | {statistics.median(times['fit']):.1f} s for {n} images = "
          f"{ratio:.2f}x `tinyvit embed` ({statistics.median(times['embed']):.1f} s) |")  # fmt: skip
    print(f"| `tinyvit fit` again, embeddings from `--cache` | {ours:.1f}% | {again:.1f} s |")
    for name, (accuracy, seconds) in references.items():
        print(f"| {name} | {accuracy:.1f}% | {seconds:.2f} s (probe only) |")


if __name__ == "__main__":
    main()
