"""The errors tinyvit raises on bad input; each message names the input it is about."""

from __future__ import annotations

__all__ = [
    "FitError", "ImageError", "OfflineError", "TinyViTError", "UnknownModelError", "WeightsError", "one_line",
]  # fmt: skip


class TinyViTError(Exception):
    """Base class of tinyvit's own errors."""


class ImageError(TinyViTError, ValueError):
    """An image could not be read or decoded: missing, unreadable, empty, truncated, not an
    image, or too large. ``input`` names the image (a quoted path, ``<1234 bytes>``, …) and
    ``reason`` says what is wrong with it; the message is ``"{input}: {reason}"``."""

    def __init__(self, input: str, reason: str):
        super().__init__(input, reason)  # both in args, so the error pickles (Ray, worker processes)
        self.input = input
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.input}: {self.reason}"


class WeightsError(TinyViTError, ValueError):
    """Weights could not be found, fetched, verified or matched to the architecture."""


class OfflineError(WeightsError):
    """Weights are not in the local cache, and the Hub (or URL) cannot be reached or is switched off
    (``HF_HUB_OFFLINE``)."""


class UnknownModelError(TinyViTError, ValueError):
    """A model name or tag that the manifest does not list."""


class FitError(TinyViTError, ValueError):
    """A classifier cannot be fitted (``tinyvit fit``): an empty class, a single class, a label
    file naming missing files, a base model that gives no embedding to fit on."""


def one_line(e: BaseException) -> str:
    """An error's message on one line, as the command line and job summaries print it: its lines
    joined (after a colon with a space, else with "; "), the type's name when it has no message."""
    out = ""
    for part in (line.strip() for line in str(e).splitlines()):
        if part:
            out += part if not out else (" " if out.endswith(":") else "; ") + part
    return out or type(e).__name__
