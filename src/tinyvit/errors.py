"""The errors tinyvit raises on bad input; each message names the input it is about."""

from __future__ import annotations


class TinyViTError(Exception):
    """Base class of tinyvit's own errors."""


class ImageError(TinyViTError, ValueError):
    """An image could not be read or decoded: missing, unreadable, empty, truncated, not an
    image, or too large."""


class WeightsError(TinyViTError, ValueError):
    """Weights could not be found, fetched, verified or matched to the architecture."""


class OfflineError(WeightsError):
    """Weights are not in the local cache, and the Hub (or URL) cannot be reached or is switched off
    (``HF_HUB_OFFLINE``)."""
