"""``tinyvit search --html``: one self-contained page of thumbnails (JPEG data URIs) with their
scores, for search results or groups of near-duplicates. Nothing on the page is fetched from
elsewhere; it opens from a mail attachment as well as from disk."""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from pathlib import Path

from tinyvit.core.errors import ImageError
from tinyvit.core.fsutil import atomic_path
from tinyvit.images.decode import load_image

__all__ = ["THUMBNAIL", "thumbnail_uri", "write_page"]

THUMBNAIL = 256  # pixels, the longer side

STYLE = """body{font:14px system-ui,sans-serif;margin:1.5em;background:#fafafa}
h2{font-size:15px;margin:1.5em 0 .5em}
.grid{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;width:256px;background:#fff;border:1px solid #ddd;border-radius:6px;padding:6px}
figure img{display:block;max-width:256px;max-height:256px;margin:auto}
figcaption{font-size:12px;word-break:break-all;margin-top:4px}
.score{font-weight:600}"""


def thumbnail_uri(path: str) -> str | None:
    """A JPEG thumbnail of the image as a ``data:`` URI (its EXIF orientation applied), or None when
    it cannot be read any more."""
    try:
        img = load_image(path, draft_size=(THUMBNAIL, THUMBNAIL))
    except (ImageError, OSError):
        return None
    img.thumbnail((THUMBNAIL, THUMBNAIL))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(rank: int | None, score: float, path: str) -> str:
    uri = thumbnail_uri(path)
    shown = html.escape(path)
    img = f'<img src="{uri}" alt="{shown}">' if uri else "<p>(the image can no longer be read)</p>"
    link = Path(path).resolve().as_uri() if os.path.isabs(path) and "://" not in path else html.escape(path)
    head = f"{rank}. " if rank is not None else ""
    return (f'<figure><a href="{html.escape(link)}">{img}</a><figcaption>{head}<span class="score">{score:.4f}'
            f'</span><br>{shown}</figcaption></figure>')  # fmt: skip


def write_page(
    output: str | os.PathLike, title: str, sections: Sequence[tuple[str, Sequence[tuple[int | None, float, str]]]]
) -> Path:
    """Write the page: ``sections`` are (heading, [(rank or None, score, path)]) — one for search
    hits, one per group of near-duplicates. Written whole or not at all."""
    body = []
    for heading, items in sections:
        if heading:
            body.append(f"<h2>{html.escape(heading)}</h2>")
        body.append('<div class="grid">' + "".join(_figure(*item) for item in items) + "</div>")
    name = html.escape(title)
    page = (f'<!doctype html><html><head><meta charset="utf-8"><title>{name}</title><style>{STYLE}</style>'
            f"</head><body><h1>{name}</h1>{''.join(body)}</body></html>\n")  # fmt: skip
    output = Path(output)
    with atomic_path(output, suffix=".html") as tmp:
        tmp.write_text(page, encoding="utf-8")
    return output
