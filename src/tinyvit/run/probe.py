"""A linear probe on frozen features: multinomial logistic regression with L2, in torch alone.

The features are standardized (mean 0, standard deviation 1 per feature, on the training set), the
classes weighted so that each counts as much as any other (scikit-learn's ``class_weight=
"balanced"``), and the objective is scikit-learn's: ``C * sum_i w_i CE_i + |W|^2 / 2`` (the bias is
not penalized), minimized full-batch by L-BFGS with a strong Wolfe line search, in float64, from
zeros. The strength ``C`` is chosen from a small log grid by stratified k-fold cross-validation on
the training set (at most 5 folds, fewer when a class is small), or on a held-out set: the grid
point with the best class-balanced held-out accuracy, ties broken by the lower held-out
cross-entropy, then by the stronger regularization. The only randomness is the assignment of
images to folds, drawn from ``seed``: the same data and seed give the same probe, bit for bit.

A :class:`Probe`'s standardization folds into one linear map (:meth:`Probe.linear`), so the probe
is an ordinary linear classifier head. Nothing here knows about images or files.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["GRID", "MAX_FOLDS", "Probe", "ProbeReport", "confusion", "fit_probe", "stratified_folds", "train"]

GRID = tuple(10.0**k for k in range(-4, 3))  # C, the inverse L2 strength (scikit-learn's meaning)
MAX_FOLDS = 5
DEFAULT_C = 1.0  # scikit-learn's default: used when nothing can be held out
MAX_ITER = 300
SMALL = 1 << 22  # N * E * K below which one thread is faster: thread start-up and contention outweigh the work


@dataclass(frozen=True)
class Probe:
    """A fitted probe: ``logits = ((x - mean) / scale) @ weight.T + bias`` (float64)."""

    weight: torch.Tensor  # (K, E), on standardized features
    bias: torch.Tensor  # (K,)
    mean: torch.Tensor  # (E,)
    scale: torch.Tensor  # (E,)
    C: float

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Raw features (N, E) → class logits (N, K), float64."""
        return ((x.double() - self.mean) / self.scale) @ self.weight.T + self.bias

    def linear(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The standardization folded in: (A, c) with ``logits = x @ A.T + c`` on raw features."""
        a = self.weight / self.scale
        return a, self.bias - a @ self.mean


@dataclass(frozen=True)
class ProbeReport:
    """The probe fitted on all the training features, and how well the chosen ``C`` did held out."""

    probe: Probe
    accuracy: float | None  # top-1 on held-out features, percent (None: nothing could be held out)
    confusion: torch.Tensor | None  # (K, K) counts of held-out predictions: row = true class, column = predicted
    validation: str  # how it was held out, for people
    scores: dict[float, float]  # C → class-balanced held-out accuracy (percent), for each C of the grid


def class_weights(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Balanced weights, one per sample: n / (K * n_class), so that the weights sum to n."""
    counts = torch.bincount(y, minlength=num_classes).double()
    per_class = len(y) / (num_classes * counts.clamp(min=1))
    return per_class[y]


def _standardizer(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = x.mean(dim=0)
    scale = x.std(dim=0, unbiased=False)
    return mean, torch.where(scale > 1e-12, scale, torch.ones_like(scale))  # a constant feature stays put


def train(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, C: float, *, init: Probe | None = None
) -> Probe:
    """The probe minimizing ``C * sum_i w_i CE_i + |W|^2 / 2`` on standardized ``x`` (N, E) with
    labels ``y`` (N,) in 0..K-1 and balanced weights ``w``; ``init``: a probe to start from (a
    warm start along the grid; it must have been fitted on the same ``x``), else zeros."""
    x = x.double()
    mean, scale = _standardizer(x)
    z = (x - mean) / scale
    n = len(y)
    w = class_weights(y, num_classes) / n  # the objective divided by C * n: the same minimizer, a gradient of O(1)
    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64) if init is None else init.weight.clone()
    bias = torch.zeros(num_classes, dtype=torch.float64) if init is None else init.bias.clone()
    onehot = F.one_hot(y, num_classes).double()
    penalty = 0.5 / (C * n)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=MAX_ITER, history_size=10, tolerance_grad=1e-6,
                                  tolerance_change=1e-10, line_search_fn="strong_wolfe")  # fmt: skip

    def closure() -> torch.Tensor:  # the loss, and its gradient by hand (no autograd: 3x faster on small sets)
        logits = torch.addmm(bias, z, weight.T)
        log_p = logits.log_softmax(dim=1)
        loss = -(w * (log_p * onehot).sum(dim=1)).sum() + penalty * weight.pow(2).sum()
        g = (log_p.exp() - onehot) * w[:, None]  # d loss / d logits
        weight.grad = g.T @ z + (2 * penalty) * weight
        bias.grad = g.sum(dim=0)
        return loss

    optimizer.step(closure)
    return Probe(weight.detach(), bias.detach(), mean, scale, float(C))


@contextlib.contextmanager
def _threads_for(size: int) -> Iterator[None]:
    """One torch thread for a small problem (each L-BFGS step is a few tiny matrix products, where
    waking threads costs more than it saves, and much more on a busy machine); all of them otherwise."""
    before = torch.get_num_threads()
    if size < SMALL and before > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def stratified_folds(y: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """The fold (0..k-1) of each sample: each class's samples shuffled (by ``seed``) and dealt
    round-robin, continuing where the previous class stopped, so folds differ in size by at most one."""
    g = torch.Generator().manual_seed(seed)
    folds = torch.empty(len(y), dtype=torch.long)
    offset = 0
    for c in torch.unique(y).tolist():
        idx = (y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        folds[idx] = (torch.arange(len(idx)) + offset) % k
        offset += len(idx)
    return folds


def confusion(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) counts: row = true class, column = predicted class."""
    return torch.bincount(y * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def _scores(logits: torch.Tensor, y: torch.Tensor, num_classes: int) -> tuple[float, float]:
    """(class-balanced accuracy in percent, mean cross-entropy) of held-out logits."""
    hit = (logits.argmax(dim=1) == y).double()
    present = torch.unique(y)
    recall = torch.stack([hit[y == c].mean() for c in present])
    return 100.0 * recall.mean().item(), F.cross_entropy(logits, y).item()


def _best(scores: dict[float, tuple[float, float]]) -> float:
    """The C with the highest balanced accuracy, then the lowest cross-entropy, then the smallest C."""
    return min(scores, key=lambda c: (-round(scores[c][0], 9), round(scores[c][1], 9), c))


def _path(x: torch.Tensor, y: torch.Tensor, num_classes: int, grid: tuple[float, ...]) -> dict[float, Probe]:
    """A probe per C, strongest regularization first, each warm-started from the previous one."""
    probes: dict[float, Probe] = {}
    previous = None
    for C in sorted(grid):
        previous = probes[C] = train(x, y, num_classes, C, init=previous)
    return probes


def fit_probe(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    *,
    seed: int = 0,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    grid: tuple[float, ...] = GRID,
) -> ProbeReport:
    """Choose C (on ``val`` = (features, labels) when given, else by stratified k-fold
    cross-validation on ``x``), fit the probe on all of ``x`` with it, and report the held-out
    accuracy and confusion of the chosen C. With a class of a single image and no ``val``
    nothing can be held out: C is scikit-learn's default, 1, and the accuracy None."""
    with _threads_for(x.shape[0] * x.shape[1] * num_classes):
        return _fit_probe(x, y.long(), num_classes, seed, val, grid)


def _fit_probe(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, seed: int, val: tuple[torch.Tensor, torch.Tensor] | None,
    grid: tuple[float, ...],
) -> ProbeReport:
    if val is not None:
        vx, vy = val[0].double(), val[1].long()
        probes = _path(x, y, num_classes, grid)
        held = {C: p.logits(vx) for C, p in probes.items()}
        best = _best({C: _scores(logits, vy, num_classes) for C, logits in held.items()})
        how = f"held-out set of {len(vy)} images"
        return _report(probes[best], held, vy, num_classes, how)
    k = min(MAX_FOLDS, int(torch.bincount(y, minlength=num_classes).min()))
    if k < 2:
        return ProbeReport(train(x, y, num_classes, DEFAULT_C), None, None, "none (a class has one image)", {})
    folds = stratified_folds(y, k, seed)
    held = {C: torch.empty(len(y), num_classes, dtype=torch.float64) for C in grid}
    for f in range(k):
        inside, out = folds != f, folds == f
        for C, p in _path(x[inside], y[inside], num_classes, grid).items():
            held[C][out] = p.logits(x[out])
    best = _best({C: _scores(logits, y, num_classes) for C, logits in held.items()})
    return _report(train(x, y, num_classes, best), held, y, num_classes, f"{k}-fold cross-validation")


def _report(
    probe: Probe, held: dict[float, torch.Tensor], y: torch.Tensor, num_classes: int, how: str
) -> ProbeReport:
    logits = held[probe.C]
    pred = logits.argmax(dim=1)
    accuracy = 100.0 * (pred == y).double().mean().item()
    scores = {C: _scores(h, y, num_classes)[0] for C, h in held.items()}
    return ProbeReport(probe, accuracy, confusion(pred, y, num_classes), how, scores)
