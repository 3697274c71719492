"""``tinyvit.Index``: a photo library searchable by words or by example, kept up to date incrementally.

``Index.open(path, model)`` opens (or, with ``create=True``, prepares) an index; ``update(paths)``
embeds new and changed photos through the runner (changed: size or modification time differs, and
then the content hash), drops removed ones and leaves the rest unread, committing every few hundred
photos (Ctrl-C keeps what was committed); ``search(query)`` is an exact cosine top-k over the stored
unit vectors (a matrix–vector product); ``duplicates()`` groups near-duplicates. Queries are words
(the model's text tower), images, or rclip-style sums (``run/search/query.py``). An index remembers
its model (spec, weights SHA-256, preprocessing) and refuses any other.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tinyvit.core.errors import TinyViTError
from tinyvit.core.fsutil import sha256_file
from tinyvit.images.inputs import describe_input, files_from_args, image_files
from tinyvit.run.options import ModelOptions
from tinyvit.run.search.query import Term, parse_query
from tinyvit.run.search.store import VECTOR_DTYPES, FileRow, Store

if TYPE_CHECKING:
    import torch

    from tinyvit.models.vit import VisionTransformer
    from tinyvit.run.runner import Runner

__all__ = ["COMMIT_EVERY", "Hit", "Index", "UpdateSummary", "parquet_rows"]

COMMIT_EVERY = 256  # photos per transaction: what Ctrl-C or a crash can lose at most
COMPACT_MIN = 1024  # dead rows (replaced or removed photos) before the vectors file is rewritten


@dataclass
class UpdateSummary:
    """What an update did: photos added, updated (content changed), removed, unchanged, failed."""

    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)  # one line per failed photo

    def to_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ("added", "updated", "removed", "unchanged", "failed")}


@dataclass(frozen=True)
class Hit:
    """One search result: its rank (1 = best), cosine similarity and path."""

    rank: int
    score: float
    path: str

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "score": self.score, "path": self.path}


@dataclass
class _Plan:
    """What an update has to do, found from the file system and the index alone (no model)."""

    todo: list[tuple[str, os.stat_result]] = field(default_factory=list)  # new or changed: path, stat
    touched: list[tuple[str, int, int]] = field(default_factory=list)  # same content, new size / time
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0


def _load_arg(model: str | os.PathLike | VisionTransformer | None) -> str | None:
    """How an index names its model for later loads: a local path made absolute, else the spec."""
    if not isinstance(model, (str, os.PathLike)):  # None, or a loaded model
        return None
    text = os.fspath(model)
    return os.path.abspath(text) if Path(text).exists() else text


class Index:
    """A searchable photo library on disk (see the module's docstring). Use :meth:`open`."""

    def __init__(self, path: Path, store: Store | None, model: Any, options: ModelOptions):
        self.path = path
        self._store = store
        self._model_arg = model
        self.options = options
        self._model: VisionTransformer | None = None
        self._runner: Runner | None = None
        self._cache: tuple[list[str], np.ndarray, np.ndarray] | None = None
        self._vectors_dtype = "float32"  # of a new index
        self._position_cache: tuple[Any, dict[int, int]] | None = None  # for the ANN path

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        model: str | os.PathLike | VisionTransformer | None = None,
        *,
        create: bool = False,
        vectors: str = "float32",
        options: ModelOptions | None = None,
        **model_options: Any,
    ) -> Index:
        """The index at ``path``. ``model`` (a spec or a loaded model) is the one to embed and query
        with: by default the one the index was built with; another is refused when it is used.
        ``create=True``: a missing index is made by the first :meth:`update` (which then needs
        ``model``), its vectors stored as ``vectors`` (``"float32"``: scores exactly those of
        :func:`tinyvit.embed`'s vectors; ``"float16"``: half the size, scores within ~1e-3).
        ``model_options``: as :func:`tinyvit.embed` takes them."""
        path = Path(path)
        o = ModelOptions.of(options, **model_options)
        if vectors not in VECTOR_DTYPES:
            raise ValueError(f"vectors must be one of {VECTOR_DTYPES}, got {vectors!r}")
        if create and not path.exists():
            if model is None:
                raise TinyViTError(f"{str(path)!r} is a new index: say which model embeds it (model=, --model)")
            index = cls(path, None, model, o)
            index._vectors_dtype = vectors
            return index
        return cls(path, Store.open(path), model, o)

    # -- what it holds

    @property
    def identity(self) -> dict[str, Any] | None:
        """The model the index was built with (None before the first update)."""
        return None if self._store is None else self._store.identity

    def __len__(self) -> int:
        return 0 if self._store is None else len(self._live()[0])

    @property
    def paths(self) -> list[str]:
        return [] if self._store is None else list(self._live()[0])

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- the model, loaded only when something has to be embedded

    def model(self) -> VisionTransformer:
        """The model, loaded on first use and checked against the index's."""
        if self._model is None:
            arg = self._model_arg
            if arg is None:
                arg = self.identity.get("load") if self.identity else None
                if arg is None:
                    name = self.identity.get("name") if self.identity else None
                    raise TinyViTError(f"{str(self.path)!r} was built with a model given as an object ({name}); "
                                       "pass it as model=")  # fmt: skip
            from tinyvit.run.runner import Runner
            from tinyvit.run.runtime import model_for
            from tinyvit.run.search.vectors import model_identity

            model = model_for(arg, replace(self.options, preprocess=None))
            runner = Runner(model, task="embed", normalize=True, preprocess=self.options.preprocess,
                            fast=self.options.fast)  # fmt: skip
            if self.identity is not None:
                self._check_identity(model_identity(model, runner, _load_arg(arg), self.options.fast))
            self._model, self._runner = model, runner
        return self._model

    def runner(self) -> Runner:
        self.model()
        assert self._runner is not None
        return self._runner

    def _check_identity(self, theirs: dict[str, Any]) -> None:
        mine = self.identity or {}
        for key, what in (("sha256", "weights"), ("preprocess", "preprocessing"), ("fast", "--fast decoding"),
                          ("dim", "embedding width")):  # fmt: skip
            if mine.get(key) != theirs.get(key):
                sha = str(mine.get("sha256"))[:12]
                raise TinyViTError(
                    f"{str(self.path)!r} was built with {mine.get('name')} (weights sha256 {sha}…); the model given, "
                    f"{theirs.get('name')}, differs in its {what}: use the index's model or another index"
                )

    def _model_changed(self) -> bool:
        """Whether the model given is not, by its spec, the one the index names (then it is loaded to check)."""
        return self._model_arg is not None and _load_arg(self._model_arg) != (self.identity or {}).get("load")

    def _live(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(paths, their rows, the vectors), read once per state of the index."""
        if self._cache is None:
            assert self._store is not None
            paths, rows = self._store.live()
            self._cache = (paths, rows, self._store.vectors())
        return self._cache

    # -- update

    def update(
        self,
        paths: Sequence[str | os.PathLike] | str | os.PathLike,
        *,
        batch_size: int = 8,
        workers: int | None = None,
        progress: bool | str = False,
        on_error: Callable[[str], None] | None = None,
    ) -> UpdateSummary:
        """Bring the index up to date with the photos under ``paths`` (files, folders, globs: what
        ``tinyvit predict`` takes). New and changed photos are embedded and committed every
        ``COMMIT_EVERY``; photos gone from disk, or from a folder given, are dropped; unchanged ones
        are not opened. A photo that cannot be read is counted, reported to ``on_error`` (one line)
        and left out. Returns what was done."""
        entries = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        listed = _listed(entries)
        roots = [os.path.abspath(e) for e in entries if Path(e).is_dir()]
        plan = _plan(listed, self._store.files() if self._store is not None else {}, roots)
        if self._store is not None and self._model_changed():
            self.model()  # a model named otherwise: the same weights, or refused before anything changes
        summary = UpdateSummary(unchanged=plan.unchanged + len(plan.touched), removed=len(plan.removed))
        if self._store is not None:
            with self._store.writing():
                self._store.touch(plan.touched)
                self._store.remove(plan.removed)
        if plan.todo:
            self._embed(plan.todo, summary, batch_size, workers, progress, on_error or (lambda line: None))
        if self._store is not None and self._store.dead_rows() > max(COMPACT_MIN, len(self._store.files())):
            with self._store.writing():
                self._store.compact()
        self._refresh_ann()
        return summary

    def _refresh_ann(self) -> None:
        """Past ``ann.ANN_MIN_ROWS``, with faiss installed: the ANN file brought up to date."""
        from tinyvit.run.search import ann

        self._cache = None
        if self._store is not None and self._store.meta["rows"] >= ann.ANN_MIN_ROWS and ann.available():
            with self._store.writing():
                ann.refresh(self._store)

    def _embed(self, todo, summary: UpdateSummary, batch_size: int, workers, progress, on_error) -> None:
        from tinyvit.run.search.vectors import Photo

        runner = self.runner()
        store = self._ensure_store(runner)
        known = set(store.files())
        photos = [Photo(p) for p, _ in todo]  # each file read once: hashed and decoded from the same bytes
        results = runner.stream(photos, names=[describe_input(p) for p, _ in todo], batch_size=batch_size,
                                workers=workers, errors="return",
                                progress="index" if progress is True else progress)  # fmt: skip
        rows: list[tuple[str, int, int, str]] = []
        vectors: list[torch.Tensor] = []
        with store.writing():
            try:
                for (path, st), photo, r in zip(todo, photos, results, strict=True):
                    if not r.ok:
                        summary.failed += 1
                        summary.errors.append(r.error_line())
                        on_error(r.error_line())
                        continue
                    assert photo.sha256 is not None  # read by the decoding thread before its result came
                    rows.append((path, st.st_size, st.st_mtime_ns, photo.sha256))
                    vectors.append(r.vector)
                    if len(rows) >= COMMIT_EVERY:
                        _commit(store, rows, vectors, known, summary)
                        rows, vectors = [], []
                if rows:
                    _commit(store, rows, vectors, known, summary)
            finally:
                results.close()
                self._cache = None

    def _ensure_store(self, runner: Runner) -> Store:
        from tinyvit.run.search.vectors import model_identity

        if self._store is None:
            identity = model_identity(runner.model, runner, _load_arg(self._model_arg), self.options.fast)
            self._store = Store.create(self.path, identity, runner.embedding_dim, self._vectors_dtype)
        return self._store

    def ingest(self, rows: Iterable[tuple[str, Any, str | None]]) -> UpdateSummary:
        """Add embeddings computed elsewhere — the rows ``tinyvit embed --ray`` writes (path,
        embedding, error) — as if :meth:`update` had embedded them with the index's model. A local
        file keeps its size and time (its content hash is left unknown: a later change re-embeds it);
        a URI has neither."""
        store = self._ensure_store(self.runner())
        known = set(store.files())
        summary = UpdateSummary()
        batch: list[tuple[str, int, int, str]] = []
        vectors: list[np.ndarray] = []
        with store.writing():
            for path, vector, error in rows:
                if error is not None or vector is None:
                    summary.failed += 1
                    summary.errors.append(f"{path!r}: {error or 'no embedding'}")
                    continue
                v = np.asarray(vector, dtype=np.float32)
                if v.shape != (store.dim,):
                    raise TinyViTError(f"{path!r}: an embedding of {tuple(v.shape)} for an index of {store.dim}")
                st = os.stat(path) if "://" not in path and os.path.exists(path) else None
                batch.append((path, st.st_size if st else -1, st.st_mtime_ns if st else -1, ""))
                vectors.append(v / max(float(np.linalg.norm(v)), 1e-12))  # as torch's normalize
                if len(batch) >= COMMIT_EVERY:
                    _commit(store, batch, vectors, known, summary)
                    batch, vectors = [], []
            if batch:
                _commit(store, batch, vectors, known, summary)
        self._refresh_ann()
        return summary

    # -- search

    def search(self, query: Any, *, top_k: int = 10, exact: bool | None = None) -> list[Hit]:
        """The ``top_k`` photos most like ``query``, best first, by cosine similarity. ``query``:
        words, an image path or URL, an rclip-style sum (``"sunset + 2:beach - people"``), a list of
        those (added up), or a vector (the model's embedding). Exact over every stored vector, unless
        the index is past ``ann.ANN_MIN_ROWS`` and has an ANN file (faiss installed) and ``exact`` is
        not True: then the ANN index's candidates, scored exactly."""
        if not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if self._store is None:
            return []
        return self.search_vector(self.query_vector(query), top_k=top_k, exact=exact)

    def search_vector(self, q: Any, *, top_k: int = 10, exact: bool | None = None) -> list[Hit]:
        """Top-k for a query vector (unit length or not: cosine either way); ``exact`` as :meth:`search`."""
        import torch

        from tinyvit.run.search.vectors import exact_scores

        paths, rows, vectors = self._live()
        q = torch.as_tensor(np.asarray(q, dtype=np.float32)).flatten()
        if vectors.ndim == 2 and q.shape[0] != vectors.shape[1]:
            raise TinyViTError(f"a query vector of {q.shape[0]} numbers for an index of {vectors.shape[1]}")
        q = torch.nn.functional.normalize(q, dim=0)
        if not exact and (hits := self._approximate(q, top_k)) is not None:
            return hits
        scores = exact_scores(vectors, q)[torch.from_numpy(rows)]
        top = torch.topk(scores, min(top_k, len(paths)))
        pairs = zip(top.values.tolist(), top.indices.tolist(), strict=True)
        return [Hit(i + 1, s, paths[j]) for i, (s, j) in enumerate(pairs)]

    def _approximate(self, q: Any, top_k: int) -> list[Hit] | None:
        """The ANN path (see ``run/search/ann.py``), or None where exact search is to be used."""
        from tinyvit.run.search import ann

        paths, rows, vectors = self._live()
        if len(paths) < ann.ANN_MIN_ROWS or not ann.available() or self._store is None:
            return None
        found = ann.candidates(self._store, q.numpy(), top_k)
        if found is None:
            return None
        position = self._positions()
        live = [(int(r), position[int(r)]) for r in found if int(r) in position]
        if len(live) < min(top_k, len(paths)):  # too many candidates were replaced or removed rows
            return None
        cand = np.array([r for r, _ in live])
        scores = np.asarray(vectors[cand], dtype=np.float32) @ q.numpy()
        order = np.argsort(-scores, kind="stable")[:top_k]
        return [Hit(i + 1, float(scores[j]), paths[live[j][1]]) for i, j in enumerate(order)]

    def _positions(self) -> dict[int, int]:
        """Row in the vectors file → position in :meth:`_live`'s paths."""
        live = self._live()
        if self._position_cache is None or self._position_cache[0] is not live:
            self._position_cache = (live, {int(r): i for i, r in enumerate(live[1])})
        return self._position_cache[1]

    def query_vector(self, query: Any) -> torch.Tensor:
        """A query → one unit vector: each term's unit embedding times its weight, summed, normalized."""
        import torch

        if isinstance(query, (torch.Tensor, np.ndarray)):
            return torch.nn.functional.normalize(torch.as_tensor(query, dtype=torch.float32).flatten(), dim=0)
        terms = parse_query(query)
        total = torch.zeros(self.identity["dim"] if self.identity else 0)
        for term, vector in zip(terms, self._term_vectors(terms), strict=True):
            total += term.weight * vector
        if not torch.linalg.vector_norm(total) > 0:
            raise TinyViTError(f"the query {' + '.join(map(str, terms))} adds up to nothing (its terms cancel)")
        return torch.nn.functional.normalize(total, dim=0)

    def _term_vectors(self, terms: list[Term]) -> list[torch.Tensor]:
        images = [t.image for t in terms if t.image is not None]
        texts = [t.text for t in terms if t.text is not None]
        by_image = iter(self._image_vectors(images) if images else [])
        if texts:
            from tinyvit.run.search.vectors import text_vectors
        by_text = iter(text_vectors(texts, self._text_model(), self.options) if texts else [])
        return [next(by_image) if t.image is not None else next(by_text) for t in terms]

    def _text_model(self) -> Any:
        """The checkpoint whose text tower embeds words: the index's (by its spec, so that the image
        tower is not loaded for words alone), or the model given, checked against the index's."""
        if self._model_arg is None or not self._model_changed():
            load = (self.identity or {}).get("load")
            if load is not None:
                return load
        return self.model()

    def _image_vectors(self, images: list[str]) -> list[torch.Tensor]:
        out = []
        for r in self.runner().stream(images, errors="return"):
            if not r.ok:
                raise TinyViTError(f"query image {r.error_line()}")
            out.append(r.vector)
        return out

    # -- near-duplicates

    def duplicates(self, threshold: float = 0.95) -> list[list[tuple[str, float]]]:
        """Groups of near-duplicate photos: photos linked by a cosine similarity >= ``threshold``
        (directly or through others). Each group: (path, best similarity to another member of the
        group), sorted by path; groups sorted by their first path."""
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be a cosine similarity in [-1, 1], got {threshold}")
        if self._store is None:
            return []
        from tinyvit.run.search.vectors import near_duplicate_groups

        paths, rows, vectors = self._live()
        return near_duplicate_groups(np.asarray(vectors)[rows], paths, threshold)


def _listed(entries: list) -> dict[str, Path]:
    """Absolute path → file, of every image the entries name (as ``tinyvit predict`` reads them);
    a folder with no images left lists none (its photos are then removed), rather than failing."""
    if not entries:
        raise TinyViTError("no photos given: name files, folders or globs")
    listed: dict[str, Path] = {}
    for entry in entries:
        folder = Path(entry)
        found = image_files(folder) if folder.is_dir() else files_from_args([entry], globs=True)
        for f in found:
            if isinstance(f, str):
                raise TinyViTError(f"{f!r}: only local files are indexed; download it first")
            listed[os.path.abspath(f)] = f
    return listed


def _plan(listed: dict[str, Path], known: dict[str, FileRow], roots: list[str]) -> _Plan:
    plan = _Plan()
    for path in listed:
        st = os.stat(path)
        row = known.get(path)
        if row is None:
            plan.todo.append((path, st))
        elif (st.st_size, st.st_mtime_ns) == (row.size, row.mtime_ns):
            plan.unchanged += 1
        else:
            sha = sha256_file(path)
            if sha == row.sha256:
                plan.touched.append((path, st.st_size, st.st_mtime_ns))
            else:
                plan.todo.append((path, st))
    inside = tuple(r.rstrip(os.sep) + os.sep for r in roots)
    plan.removed = [p for p in known if p not in listed and (p.startswith(inside) or not os.path.exists(p))]
    return plan


def _commit(store: Store, rows: list, vectors: list, known: set[str], summary: UpdateSummary) -> None:
    """One transaction of embedded photos (vectors: tensors or arrays); counted only once committed
    (Ctrl-C loses at most these)."""
    store.commit_rows(rows, np.stack([np.asarray(v, dtype=np.float32) for v in vectors]))
    updated = sum(path in known for path, *_ in rows)
    summary.updated += updated
    summary.added += len(rows) - updated


def parquet_rows(folder: str | os.PathLike) -> Iterator[tuple[str, Any, str | None]]:
    """(path, embedding, error) of each row of the Parquet files ``tinyvit embed --ray`` wrote
    (columns ``path``, ``embedding``, ``error``), read a record batch at a time (pyarrow)."""
    try:
        import pyarrow.dataset as pads
    except ImportError as e:
        raise TinyViTError(f'reading Parquet needs pyarrow: pip install "tinyvit[ray]" ({e})') from None
    try:
        data = pads.dataset(os.fspath(folder), format="parquet")
        missing = {"path", "embedding", "error"} - set(data.schema.names)
    except (OSError, ValueError) as e:
        raise TinyViTError(f"{os.fspath(folder)!r}: not Parquet files ({e})") from None
    if missing:
        raise TinyViTError(f"{os.fspath(folder)!r}: no {', '.join(sorted(missing))} column: not what "
                           "`tinyvit embed --ray` writes")  # fmt: skip
    for batch in data.to_batches(columns=["path", "embedding", "error"]):
        cols = batch.to_pydict()
        yield from zip(cols["path"], cols["embedding"], cols["error"], strict=True)
