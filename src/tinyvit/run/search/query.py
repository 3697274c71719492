"""Queries as people type them: words, an image ("more like this"), or a weighted sum as rclip takes
it — ``"sunset + 2:beach - people"``, where a term may be an image path or URL. Plain data, no torch.

A query is a list of :class:`Term`: what (words, or an image), and its weight (negative: subtract).
The operators need spaces around them (``t-shirt`` stays one word); a weight is ``W:`` before a
term (``2:beach``, ``0.5:photo.jpg``). Several query arguments add up, as one sum.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tinyvit.core.errors import TinyViTError
from tinyvit.images.inputs import is_image_url

__all__ = ["Term", "parse_query"]

_OPERATOR = re.compile(r"\s+([+-])\s+")
_WEIGHT = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)):(.+)$")


@dataclass(frozen=True)
class Term:
    """One part of a query: ``text`` (words) or ``image`` (a path or URL), times ``weight``."""

    weight: float
    text: str | None = None
    image: str | None = None

    def __str__(self) -> str:
        return f"{self.weight:g}:{self.text if self.image is None else self.image}"


def parse_query(queries: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Term]:
    """One or more query strings → their terms (each string: terms joined by `` + `` / `` - ``)."""
    if isinstance(queries, (str, os.PathLike)):
        queries = [queries]
    terms = [t for q in queries for t in _parse_one(os.fspath(q))]
    if not terms:
        raise TinyViTError("an empty query: give words, an image path or URL, or a sum such as 'sunset + 2:beach'")
    return terms


def _parse_one(query: str) -> list[Term]:
    text = query.strip()
    if _is_image(text):  # a whole argument that is an image is one term, whatever its name holds
        return [Term(1.0, image=text)]
    parts = _OPERATOR.split(" " + text + " ")  # [first, op, term, op, term, …]; first is "" after a leading op
    parts = ["+", *parts] if parts[0].strip() else parts[1:]
    return [_term(parts[i + 1].strip(), -1.0 if parts[i] == "-" else 1.0, query) for i in range(0, len(parts), 2)]


def _term(text: str, sign: float, query: str) -> Term:
    weight = 1.0
    m = _WEIGHT.match(text)
    if m and not _is_image(text):
        weight, text = float(m.group(1)), m.group(2).strip()
    if not text:
        raise TinyViTError(f"query {query!r}: an empty term (operators need a term on each side)")
    if _is_image(text):
        return Term(sign * weight, image=text)
    return Term(sign * weight, text=text)


def _is_image(text: str) -> bool:
    """An http(s) URL, or a file that exists (a term is taken as words otherwise)."""
    if is_image_url(text):
        return True
    try:
        return Path(text).is_file()
    except OSError:  # a name too long for the filesystem: words
        return False
