"""Linear layers with their weights prepacked for oneDNN, torch's own CPU GEMM library.

``torch.nn.Linear`` on a CPU runs MKL's GEMM (where torch was built with it); oneDNN, reached
through ``torch.ops.mkldnn``, multiplies by a weight reordered once into its blocked layout. Which
one is faster depends on the CPU (MKL runs its AVX2 kernels on AMD processors, oneDNN picks its
kernels by instruction set), so ``run/cpu.py`` measures and calls :func:`pack_linears` when oneDNN
wins. The two differ by float reassociation only: the same products, summed in another order.

A :class:`PackedLinear` replaces its ``nn.Linear`` (the weight is reordered, the original freed:
memory is not doubled) and still reads as one: ``weight`` (dense, on demand), ``state_dict`` in the
original's keys and layout, ``in_features`` / ``out_features``. The GELU or SiLU that follows an
MLP's first layer is fused into that layer's GEMM (oneDNN's post-op: the same function, applied
while the output is still in cache). The layer that ends a block's branch (``attn.proj``,
``mlp.fc2``) adds the residual stream inside its GEMM too (a binary post-op: models/vit.py's
``add_branch`` hands it the residual), with the block's LayerScale folded into its weights: each
elementwise pass is a parallel section of its own, which on a busy machine costs milliseconds.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = [
    "FUSED", "SCALED", "FoldedScale", "PackedLinear", "fusable", "onednn_available", "pack_linears", "prepack",
    "residual_add_available", "unpack_linears",
]  # fmt: skip


def onednn_available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether this torch reaches oneDNN's prepacked linear (CPU builds with mkldnn) for ``dtype``
    weights: bfloat16 only where oneDNN has bf16 kernels for this CPU (AVX-512 BW/VL/DQ, or
    AVX-NE-CONVERT; an AVX2-only CPU has none: torch refuses to pack bf16 weights there)."""
    ops = getattr(torch.ops, "mkldnn", None)
    linear = (
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "_reorder_linear_weight")
        and hasattr(ops, "_linear_pointwise")
    )
    if not linear or dtype == torch.float32:
        return linear
    if dtype == torch.bfloat16:
        return hasattr(ops, "_is_mkldnn_bf16_supported") and bool(ops._is_mkldnn_bf16_supported())
    return False


@functools.cache
def residual_add_available() -> bool:
    """Whether this torch's oneDNN linear adds a tensor to its output inside the GEMM (a binary post-op)."""
    return onednn_available() and "binary" in torch.ops.mkldnn._linear_pointwise.overloads()


def prepack(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (out, in) reordered into oneDNN's layout (an opaque mkldnn tensor)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)


class PackedLinear(nn.Module):
    """``y = x Wᵀ + b`` through oneDNN with ``W`` prepacked: a drop-in for an ``nn.Linear`` on the CPU."""

    def __init__(self, linear: nn.Linear, activation: nn.Module | None = None):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("packed", prepack(linear.weight), persistent=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)
        self.fused = activation  # applied to the output inside oneDNN's GEMM (gelu, silu), else None
        self.attr, self.algorithm = ("none", "") if activation is None else _post_op(activation)
        # a LayerScale folded in (:meth:`fold`): its gamma, the scaled bias, and how far the original
        # weight is, in units in the last place, from the packed one divided back (-1, 0 or 1)
        for name in ("gamma", "scaled_bias", "ulps"):
            self.register_buffer(name, None, persistent=False)

    @property
    def weight(self) -> torch.Tensor:
        """The weight as ``nn.Linear`` holds it (a dense copy, made on each access; bit for bit the
        original where a LayerScale is folded in)."""
        dense = self.packed.to_dense()
        if self.gamma is None:
            return dense
        back = (dense.float() / self.gamma[:, None]).to(dense.dtype)
        return (_bits(back) + self.ulps).to(_BITS[dense.dtype]).view(dense.dtype)

    def fold(self, gamma: torch.Tensor | None) -> bool:
        """Fold a LayerScale into the weights: ``gamma ⊙ (x Wᵀ + b) = x (gamma ⊙ W)ᵀ + gamma ⊙ b``, one
        rounding of each scaled weight (None: unfold). The original weight stays recoverable bit for bit
        (``weight``, ``state_dict``): one byte per weight says how far it is from the scaled one divided
        back. False, and nothing changed, where it would not be (a zero or subnormal gamma)."""
        weight = self.weight
        if gamma is None:
            self.packed, self.gamma, self.scaled_bias, self.ulps = prepack(weight), None, None, None
            return True
        g = gamma.detach().float().clone()  # its own copy: loading a new gamma must not change it
        scaled = (weight.float() * g[:, None]).to(weight.dtype)
        ulps = _bits(weight) - _bits((scaled.float() / g[:, None]).to(weight.dtype))
        if not (torch.isfinite(scaled).all() and g.abs().min() >= torch.finfo(torch.float32).tiny
                and ulps.abs().max() <= 1):  # fmt: skip
            return False
        self.packed, self.gamma, self.ulps = prepack(scaled), g, ulps.to(torch.int8)
        self.scaled_bias = None if self.bias is None else (self.bias.float() * g).to(self.bias.dtype)
        return True

    @property
    def adds_residual(self) -> bool:
        """Whether ``forward`` takes a residual to add (models/vit.py's ``add_branch``): no fused activation."""
        return self.fused is None and residual_add_available()

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``x Wᵀ + b`` (+ ``residual``, added inside the GEMM: oneDNN's binary post-op, one pass over
        the output instead of two, where the residual is in the weights' dtype)."""
        dtype = self.packed.dtype  # an input of another dtype (torch.autocast's) runs in the weights' dtype
        if residual is not None and (not self.adds_residual or residual.dtype != dtype
                                     or residual.shape != (*x.shape[:-1], self.out_features)):  # fmt: skip
            return residual + self(x)  # e.g. a float32 residual stream under autocast stays float32
        bias = self.bias if self.gamma is None else self.scaled_bias
        if residual is None:
            y = torch.ops.mkldnn._linear_pointwise(x.to(dtype), self.packed, bias, self.attr, [], self.algorithm)
        else:
            y = torch.ops.mkldnn._linear_pointwise.binary(x.to(dtype), residual, self.packed, bias, "add")
        return y if x.dtype == dtype else y.to(x.dtype)

    def to_linear(self) -> nn.Linear:
        """The ``nn.Linear`` this was made from (same tensors, bit for bit)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        linear.weight = nn.Parameter(self.weight, requires_grad=False)
        if self.bias is not None:
            linear.bias = nn.Parameter(self.bias.detach(), requires_grad=False)
        return linear

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        destination[prefix + "weight"] = self.weight
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        key, gamma = prefix + "weight", self.gamma
        if (weight := state_dict.get(key)) is not None:
            self.packed, self.gamma = prepack(weight.to(self.packed.dtype)), None
            state_dict = {k: v for k, v in state_dict.items() if k != key}  # read here: not an unexpected key
        super()._load_from_state_dict(state_dict, prefix, *args)
        if gamma is not None and not self.fold(gamma):  # the new weight and bias, scaled again
            raise ValueError(f"{prefix}weight: its LayerScale cannot be folded into it again")

    def __getstate__(self) -> dict:  # an opaque tensor has no storage to pickle or deep-copy: the dense one
        state = self.__dict__.copy()
        state["_buffers"] = {**self._buffers, "packed": self.packed.to_dense()}
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._buffers["packed"] = prepack(self._buffers["packed"])

    def extra_repr(self) -> str:
        fused = ("" if self.fused is None else f" + {self.attr}") + ("" if self.gamma is None else " + LayerScale")
        bias = self.bias is not None
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={bias}, oneDNN{fused}"


_BITS = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


def _bits(t: torch.Tensor) -> torch.Tensor:
    """A float tensor's bit patterns as int32: adjacent floats of one sign are adjacent integers."""
    return t.view(_BITS[t.dtype]).int()


class FoldedScale(nn.Identity):
    """A block's LayerScale once its layer applies it (:meth:`PackedLinear.fold`): the identity, keeping
    ``gamma`` (the same parameter) for the state_dict; loading a new one folds that in."""

    def __init__(self, scale: nn.Module, layer: PackedLinear):
        super().__init__()
        self.gamma = scale.gamma
        self.folded = (scale, layer)  # the LayerScale (given back by unpack_linears) and its layer: not submodules

    def _load_from_state_dict(self, *args: Any) -> None:
        super()._load_from_state_dict(*args)
        if not self.folded[1].fold(self.gamma):
            raise ValueError(f"{args[1]}gamma cannot be folded into its layer's weights")


# A block's LayerScale and the layer whose output it scales (models/vit.py's Block: ls1 after attn.proj,
# ls2 after mlp.fc2): folded in, it leaves that layer free to add the residual inside its GEMM.
SCALED = {"ls1": ("attn", "proj"), "ls2": ("mlp", "fc2")}


# A layer whose output goes straight into its parent's activation: models/vit.py's Mlp
# (act(fc1(x))) and SwiGLU (act(fc1_g(x))). The activation then runs inside the GEMM (one pass
# over the output instead of two) and the parent's becomes the identity.
FUSED = {"fc1": "act", "fc1_g": "act"}


def _post_op(activation: nn.Module) -> tuple[str, str]:
    if type(activation) is nn.GELU:
        return "gelu", activation.approximate  # "none" (erf) or "tanh", as oneDNN names them
    if type(activation) is nn.SiLU:
        return "swish", ""
    raise ValueError(f"oneDNN's linear has no post-op for {type(activation).__name__}")


def fusable(activation: nn.Module | None) -> bool:
    """Whether oneDNN's linear can apply ``activation`` to its output itself."""
    return type(activation) in (nn.GELU, nn.SiLU)


def pack_linears(
    model: nn.Module, skip: tuple[str, ...] = ("head", "head_dist"), fuse: bool = True,
    release: Callable[[torch.Tensor], object] | None = None,
) -> int:  # fmt: skip
    """Replace ``model``'s CPU ``nn.Linear`` layers (those not named in ``skip``: the head, small and
    read by ``fit``) by :class:`PackedLinear`, one at a time; with ``fuse``, the GELU / SiLU that
    follows an MLP's first layer (:data:`FUSED`) runs inside its GEMM, and a block's LayerScale
    (:data:`SCALED`) is folded into the layer before it. ``release`` is called with each original
    weight once it is packed (and no longer used). How many were replaced."""
    count = 0
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{parent_name}.{name}" if parent_name else name
            if type(child) is not nn.Linear or full in skip or child.weight.device.type != "cpu":
                continue
            act = getattr(parent, FUSED.get(name, ""), None) if fuse else None
            act = act if fusable(act) else None
            setattr(parent, name, PackedLinear(child, act))
            if release is not None:
                release(child.weight)
            if act is not None:
                setattr(parent, FUSED[name], nn.Identity())
            count += 1
    if fuse:
        _fold_scales(model)
    return count


def _fold_scales(model: nn.Module) -> None:
    from tinyvit.models.vit import LayerScale

    for block in list(model.modules()):
        for name, (branch, attr) in SCALED.items():
            scale, layer = getattr(block, name, None), getattr(getattr(block, branch, None), attr, None)
            if type(scale) is LayerScale and type(layer) is PackedLinear and layer.fold(scale.gamma):
                setattr(block, name, FoldedScale(scale, layer))


def unpack_linears(model: nn.Module) -> int:
    """The reverse of :func:`pack_linears`: every :class:`PackedLinear` back to ``nn.Linear`` (and a
    fused activation back to its parent)."""
    count = 0
    for _, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, FoldedScale):
                setattr(parent, name, child.folded[0])
            if isinstance(child, PackedLinear):
                setattr(parent, name, child.to_linear())
                if child.fused is not None:
                    setattr(parent, FUSED[name], child.fused)
                count += 1
    return count
