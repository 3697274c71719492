"""The errors tinyvit raises on bad input; each message names the input it is about."""

from __future__ import annotations


class TinyViTError(Exception):
    """Base class of tinyvit's own errors."""


class ImageError(TinyViTError, ValueError):
    """An image could not be read or decoded: missing, unreadable, empty, truncated, not an
    image, or too large."""


class WeightsError(TinyViTError, ValueError):
    """Weights could not be found, fetched, verified or matched to the architecture."""
