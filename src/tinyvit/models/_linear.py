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
while the output is still in cache).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["FUSED", "PackedLinear", "fusable", "onednn_available", "pack_linears", "prepack", "unpack_linears"]


def onednn_available() -> bool:
    """Whether this torch reaches oneDNN's prepacked linear (CPU builds with mkldnn)."""
    ops = getattr(torch.ops, "mkldnn", None)
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "_reorder_linear_weight")
        and hasattr(ops, "_linear_pointwise")
    )


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

    @property
    def weight(self) -> torch.Tensor:
        """The weight as ``nn.Linear`` holds it (a dense copy, made on each access)."""
        return self.packed.to_dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.packed.dtype  # an input of another dtype (torch.autocast's) runs in the weights' dtype
        y = torch.ops.mkldnn._linear_pointwise(x.to(dtype), self.packed, self.bias, self.attr, [], self.algorithm)
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
        key = prefix + "weight"
        if (weight := state_dict.get(key)) is not None:
            self.packed = prepack(weight.to(self.packed.dtype))
            state_dict = {k: v for k, v in state_dict.items() if k != key}  # read here: not an unexpected key
        super()._load_from_state_dict(state_dict, prefix, *args)

    def __getstate__(self) -> dict:  # an opaque tensor has no storage to pickle or deep-copy: the dense one
        state = self.__dict__.copy()
        state["_buffers"] = {**self._buffers, "packed": self.weight}
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._buffers["packed"] = prepack(self._buffers["packed"])

    def extra_repr(self) -> str:
        fused = "" if self.fused is None else f" + {self.attr}"
        bias = self.bias is not None
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={bias}, oneDNN{fused}"


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
    follows an MLP's first layer (:data:`FUSED`) runs inside its GEMM. ``release`` is called with
    each original weight once it is packed (and no longer used). How many were replaced."""
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
    return count


def unpack_linears(model: nn.Module) -> int:
    """The reverse of :func:`pack_linears`: every :class:`PackedLinear` back to ``nn.Linear`` (and a
    fused activation back to its parent)."""
    count = 0
    for _, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, PackedLinear):
                setattr(parent, name, child.to_linear())
                if child.fused is not None:
                    setattr(parent, FUSED[name], child.fused)
                count += 1
    return count
