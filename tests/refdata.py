"""Deterministic test data shared by the tests and by scripts/make_fixtures.py.

Weights, input tensors and images are pure functions of their names and shapes, computed with
integer arithmetic (splitmix64) and one float conversion, so the fixture script (run with the
reference libraries, in another environment) and the tests make bit-identical data without
storing it. Needs only numpy.
"""

from __future__ import annotations

import re
import struct
import zlib

import numpy as np


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's output function, elementwise (in place on a copy of ``x``)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    for shift, mult in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
        x ^= x >> np.uint64(shift)
        x *= np.uint64(mult)  # wraps modulo 2**64, as intended
    x ^= x >> np.uint64(31)
    return x


def uniform(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform in [0, 1), float64, seeded by ``name``."""
    n = int(np.prod(shape, dtype=np.int64))
    seed = np.uint64(zlib.crc32(name.encode()) << 20)
    bits = _splitmix64(np.arange(n, dtype=np.uint64) + seed)
    bits >>= np.uint64(11)
    out = bits.astype(np.float64)
    out *= 2.0**-53
    return out.reshape(shape)


_NORM_WEIGHT = re.compile(r"(^|[./_])(norm\w*|ln\d*|layernorm\w*|LayerNorm_\d+|encoder_norm)[./](weight|scale)$")


def fill(name: str, shape) -> np.ndarray:
    """A float32 weight for parameter ``name``: LayerNorm gains near 1, biases small, the rest
    uniform in ±0.05 (about timm's init scale, large enough for non-trivial attention)."""
    shape = tuple(int(s) for s in shape)
    u = uniform(name, shape) * 2 - 1  # [-1, 1)
    if _NORM_WEIGHT.search(name):
        return (1 + 0.1 * u).astype(np.float32)
    if name.endswith("bias"):
        return (0.02 * u).astype(np.float32)
    return (0.05 * u).astype(np.float32)


def make_input(name: str, shape) -> np.ndarray:
    """A float32 input tensor in [-1, 1), like normalized pixels."""
    return (uniform("input/" + name, tuple(shape)) * 2 - 1).astype(np.float32)


def make_image(width: int, height: int, seed: int = 0, *, texture: bool = True) -> np.ndarray:
    """An H×W×3 uint8 RGB test image: smooth gradients, hard edges and (with ``texture``) pixel
    noise, so that resampling, crop offsets and channel order all show in the output."""
    y, x = np.mgrid[0:height, 0:width].astype(np.int64)
    noise = np.zeros_like(x)
    if texture:
        bits = _splitmix64((y * 100003 + x + seed * 7919).astype(np.uint64).ravel()) >> np.uint64(56)
        noise = bits.astype(np.int64).reshape(height, width)
    r = (x * 255) // max(width - 1, 1)
    g = (y * 255) // max(height - 1, 1)
    b = np.where(((x // 7) + (y // 5)) % 2 == 0, 40, 215) + (noise % 16) - 8
    img = np.stack([r, g, b], axis=-1)
    img = (img + (noise[..., None] % 24) - 12) % 256
    return img.astype(np.uint8)


def png_claiming(width: int, height: int) -> bytes:
    """A tiny, valid-looking PNG whose header claims width × height: a decompression bomb's calling card."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
