"""Batch classification and embeddings on Ray Data (the ``tinyvit[ray]`` extra).

Ray Data is the engine for offline batch inference on a cluster, CPU or GPU; tinyvit plugs into
it as two callable classes for :meth:`ray.data.Dataset.map_batches`. Each actor loads the model
once (in ``__init__``) and classifies one batch per call, through the same code as
:func:`tinyvit.predict` — same decoding, preprocessing and forward pass — so every row holds the
numbers ``predict`` gives for that image::

    import ray, tinyvit.ray

    ds = ray.data.read_binary_files("s3://bucket/images/", include_paths=True)
    ds = ds.map_batches(tinyvit.ray.Classifier, fn_constructor_kwargs={"model": "vit-base-p16-384"},
                        batch_size=64, compute=ray.data.ActorPoolStrategy(size=4), num_gpus=1)
    ds.write_parquet("s3://bucket/predictions/")

Input: the first of these columns the dataset has (or the one ``column=`` names):

* ``bytes``: encoded image files (``read_binary_files``) — decoded by tinyvit, so the numbers
  equal ``tinyvit.predict`` on the same files exactly;
* ``image``: decoded H×W×3 uint8 arrays (``read_images``). Ray decodes these itself and does not
  apply the EXIF orientation, nor tinyvit's rules for transparency (composited on white) and
  16-bit images; for RGB images without an orientation tag (most JPEGs) the pixels, and so the
  numbers, are the same, and for the arrays given they always equal ``tinyvit.predict`` on those
  arrays. Prefer ``bytes``;
* ``path``: files the actors read themselves (a shared filesystem on a cluster).

Output: every input column, except that the ``bytes`` / ``image`` data is dropped unless
``keep_input=True``, plus

* :class:`Classifier`: ``label`` (int64), ``name`` (string), ``score`` (float64, the top-1
  probability), ``topk`` (list of ``{label, name, score}``, highest first) and ``error``;
* :class:`Embedder`: ``embedding`` (list of float32, the image embedding :func:`tinyvit.embed`
  gives — an embedding model's own output, a classifier's pooled feature before its head —, unit
  L2 norm with ``normalize=True``) and ``error``.

``error`` is null for a good image; an image that cannot be read or decoded gives a row with
``error`` set (the message :func:`tinyvit.predict` gives for that file) and nulls in the result
columns. No row is dropped, none is added. The new columns are Arrow arrays (numpy batches) or
Arrow-backed columns (pandas batches), so their types and nulls survive into Parquet.

:func:`run_job` runs a whole job on a folder, a glob or a list of files and writes Parquet: what
``tinyvit predict --ray`` / ``tinyvit embed --ray`` do.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import logging
import math
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tinyvit.core.errors import TinyViTError


class RayExtraMissing(TinyViTError, ImportError):
    """Ray Data (the ``tinyvit[ray]`` extra) is not installed."""


_missing = [m for m in ("ray", "pyarrow", "pandas") if importlib.util.find_spec(m) is None]
if _missing:  # pragma: no cover - depends on the environment
    raise RayExtraMissing(f'tinyvit.ray needs Ray Data ({", ".join(_missing)} missing): pip install "tinyvit[ray]"')

import pyarrow as pa  # noqa: E402  (ray[data] installs it)
import torch  # noqa: E402

from tinyvit.images.inputs import IMAGE_SUFFIXES, describe_input, files_from_args  # noqa: E402
from tinyvit.models.vit import VisionTransformer  # noqa: E402
from tinyvit.run.options import DEFAULT_MODEL, ModelOptions  # noqa: E402
from tinyvit.run.session import runner_for  # noqa: E402
from tinyvit.weights.specs import parse_spec  # noqa: E402

__all__ = ["Classifier", "Embedder", "JobSummary", "RayExtraMissing", "run_job"]

INPUT_COLUMNS = ("bytes", "image", "path")  # in order of preference
DATA_COLUMNS = ("bytes", "image")  # dropped from the output unless keep_input=True
TOPK_TYPE = pa.list_(pa.struct([("label", pa.int64()), ("name", pa.string()), ("score", pa.float64())]))
EMBEDDING_TYPE = pa.list_(pa.float32())


def _ray():
    """Ray, imported on first use: :func:`run_job` sets up a loopback-only local cluster, which
    has to be arranged before Ray is imported."""
    import ray
    import ray.data  # noqa: F401

    return ray


# ---------------------------------------------------------------------------------------------
# The callable classes


def _assigned(resource: str) -> float:
    """How much of ``resource`` Ray gave this actor (0 outside a Ray actor)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized() or ray.get_runtime_context().get_actor_id() is None:
        return 0.0
    return float(ray.get_runtime_context().get_assigned_resources().get(resource, 0.0))


def _missing_value(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


class _Runner:
    """What :class:`Classifier` and :class:`Embedder` share: the model, the input column, the
    pass-through of the other columns."""

    _outputs: tuple[str, ...] = ()

    def _setup(
        self, model: str | os.PathLike | VisionTransformer, o: ModelOptions, column: str | None, keep_input: bool,
        prefix: str,
    ) -> None:
        if column is not None and column not in INPUT_COLUMNS:
            raise TinyViTError(f"column must be one of {', '.join(INPUT_COLUMNS)}, got {column!r}")
        if o.device is None and _assigned("GPU") > 0 and torch.cuda.is_available():
            o = replace(o, device="cuda")  # Ray has set CUDA_VISIBLE_DEVICES to this actor's GPU(s)
        self.runner = runner_for(model, o, **self._task())
        self.model = self.runner.model
        self.column = column
        self.keep_input = keep_input
        self.names = {c: prefix + c for c in self._outputs}
        cpus = _assigned("CPU")
        if cpus <= 0:
            self.workers = None  # outside Ray: the pipeline's default
        elif next(self.model.parameters()).device.type == "cuda":
            self.workers = max(1, int(cpus))  # every CPU of the actor decodes
        else:
            self.workers = max(1, int(cpus) - torch.get_num_threads())  # the CPUs torch leaves

    # -- subclasses
    def _task(self) -> dict[str, Any]:
        raise NotImplementedError

    def _columns(self, results: list[Any | None]) -> dict[str, pa.Array]:
        raise NotImplementedError

    # -- a batch
    def __call__(self, batch: Any) -> Any:
        pd = sys.modules.get("pandas")
        is_frame = pd is not None and isinstance(batch, pd.DataFrame)
        if not is_frame and not isinstance(batch, Mapping):
            raise TinyViTError(
                f"tinyvit.ray takes numpy or pandas batches (map_batches' batch_format), not {type(batch).__name__}"
            )
        columns = list(batch.columns) if is_frame else list(batch)
        column = self.column or next((c for c in INPUT_COLUMNS if c in columns), None)
        if column is None or column not in columns:
            raise TinyViTError(
                f"the dataset has no {' / '.join(INPUT_COLUMNS) if column is None else repr(column)} column "
                f"(it has {', '.join(map(repr, columns)) or 'none'}); read it with ray.data.read_binary_files "
                "or read_images, or name the column with column="
            )
        clash = sorted(set(self.names.values()) & set(columns))
        if clash:
            raise TinyViTError(
                f"the dataset already has a column {', '.join(map(repr, clash))}; pass prefix= (e.g. 'pred_') "
                "or rename it (Dataset.rename_columns)"
            )
        values = batch[column].tolist() if is_frame else list(batch[column])
        paths = None
        if column != "path" and "path" in columns:
            paths = batch["path"].tolist() if is_frame else list(batch["path"])

        todo = [i for i, v in enumerate(values) if not _missing_value(v)]
        results: list[Any | None] = [None] * len(values)
        errors: list[str | None] = [f"no image: the {column!r} value is null"] * len(values)
        if todo:
            names = [_name(values[i], paths[i] if paths is not None else None) for i in todo]
            ran = self.runner.stream(
                [values[i] for i in todo], names=names, batch_size=len(todo), errors="return", workers=self.workers
            )
            for i, r in zip(todo, ran, strict=True):
                results[i], errors[i] = (r, None) if r.ok else (None, r.error)
        new = self._columns(results)
        new["error"] = pa.array(errors, pa.string())
        new = {self.names[k]: v for k, v in new.items()}

        drop = [] if self.keep_input or column not in DATA_COLUMNS else [column]
        if is_frame:
            table = pa.table(new).to_pandas(types_mapper=pd.ArrowDtype)
            table.index = batch.index
            return pd.concat([batch.drop(columns=drop), table], axis=1)
        out = {k: v for k, v in batch.items() if k not in drop}
        out.update(new)
        return out



def _name(value: Any, path: Any) -> str:
    """How errors name an image: bytes or an array by its file (the ``path`` column) where the
    dataset has one, as :func:`tinyvit.predict` names that file."""
    return repr(str(path)) if path is not None and not _missing_value(path) else describe_input(value)


class Classifier(_Runner):
    """Classify the images of a Ray Dataset: ``ds.map_batches(tinyvit.ray.Classifier,
    fn_constructor_kwargs={"model": ...}, batch_size=..., compute=ray.data.ActorPoolStrategy(size=...))``
    (``concurrency=N``, the older spelling, works too).

    Adds ``label``, ``name``, ``score``, ``topk`` and ``error`` (see the module docstring).
    Constructor arguments:

    * ``model``: a zoo name or alias, ``"name:tag"``, a checkpoint path (visible to every node),
      ``"hf-hub:owner/repo"``, or a loaded model; ``top_k``: classes in ``topk``;
    * the model options (``device`` — default: ``cuda`` in an actor that Ray gave a GPU, else the
      CPU —, ``dtype``, ``fast``, ``labels``, ``preprocess``, ``arch``) as keyword arguments or
      ``options=``, as :func:`tinyvit.predict` takes them;
    * ``column``: the input column (default: ``bytes``, else ``image``, else ``path``);
      ``keep_input``: keep the ``bytes`` / ``image`` column in the output; ``prefix``: put
      before the new columns' names (e.g. ``"pred_"`` when the dataset has a ``label`` column).

    Each call runs its batch through :func:`tinyvit.predict_iter` as one forward pass (decoding on
    as many threads as the actor has CPUs, less torch's threads on the CPU): map_batches'
    ``batch_size`` is the model's batch.
    """

    _outputs = ("label", "name", "score", "topk", "error")

    def __init__(
        self,
        model: str | os.PathLike | VisionTransformer = DEFAULT_MODEL,
        *,
        top_k: int = 5,
        column: str | None = None,
        keep_input: bool = False,
        prefix: str = "",
        options: ModelOptions | None = None,
        **model_options: Any,
    ) -> None:
        if top_k < 1:
            raise TinyViTError(f"top_k must be >= 1, got {top_k}")
        self.top_k = top_k
        self._setup(model, ModelOptions.of(options, **model_options), column, keep_input, prefix)

    def _task(self) -> dict[str, Any]:
        return {"task": "classify", "top_k": self.top_k}

    def _columns(self, results: list[Any | None]) -> dict[str, pa.Array]:
        return {
            "label": pa.array([None if r is None else r.label for r in results], pa.int64()),
            "name": pa.array([None if r is None else r.name for r in results], pa.string()),
            "score": pa.array([None if r is None else r.score for r in results], pa.float64()),
            "topk": pa.array(
                [None if r is None else [{"label": i, "name": n, "score": p} for i, n, p in r.topk] for r in results],
                TOPK_TYPE,
            ),
        }


class Embedder(_Runner):
    """The image embedding of each image of a Ray Dataset (what :func:`tinyvit.embed` gives):
    adds ``embedding`` (list of float32) and ``error``.

    Constructor arguments as :class:`Classifier`'s, with ``normalize=True`` (unit L2 norm) in
    place of ``top_k``.
    """

    _outputs = ("embedding", "error")

    def __init__(
        self,
        model: str | os.PathLike | VisionTransformer = DEFAULT_MODEL,
        *,
        normalize: bool = False,
        column: str | None = None,
        keep_input: bool = False,
        prefix: str = "",
        options: ModelOptions | None = None,
        **model_options: Any,
    ) -> None:
        self.normalize = normalize
        self._setup(model, ModelOptions.of(options, **model_options), column, keep_input, prefix)

    def _task(self) -> dict[str, Any]:
        return {"task": "embed", "normalize": self.normalize}

    def _columns(self, results: list[Any | None]) -> dict[str, pa.Array]:
        vectors = [None if r is None else r.vector.numpy() for r in results]
        return {"embedding": pa.array(vectors, EMBEDDING_TYPE)}


# ---------------------------------------------------------------------------------------------
# A whole job: files → Parquet


@dataclass(frozen=True)
class JobSummary:
    output: str  # the Parquet folder
    rows: int  # rows written: one per input
    failed: int  # rows with an error
    errors: list[tuple[str, str]]  # (path, error) of the first ``max_errors`` failed rows
    seconds: float  # wall time of the job, cluster start-up included


def _is_uri(text: str) -> bool:
    return "://" in text


def job_inputs(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> tuple[list[str], bool]:
    """The files a job reads, and whether they are URIs. Local entries may be files, folders (their
    image files, recursively, sorted: what :func:`tinyvit.predict` takes) or glob patterns; each
    local file becomes its absolute path (the actors may run elsewhere), and is checked now, before
    any cluster starts. URIs (``s3://…``, ``gs://…``, ``file://…``) go to Ray as they are."""
    entries = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if not entries:
        raise TinyViTError("no inputs given")
    texts = [os.fspath(e) for e in entries]
    uris = [_is_uri(t) for t in texts]
    if any(uris):
        if not all(uris):
            raise TinyViTError("give either local paths or URIs (s3://, gs://, file://…), not both")
        return texts, True
    return [os.path.abspath(f) for f in files_from_args(texts, globs=True)], False


def _connect(address: str | None) -> bool:
    """Connect to the cluster at ``address``, or start a local one (every core, loopback only, no
    dashboard, no usage reporting). True when this call connected, so the job disconnects after."""
    if "ray" not in sys.modules and address is None:
        # Both must be set before Ray is imported: a local cluster listens on 127.0.0.1 only.
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray = _ray()
    if ray.is_initialized():
        return False  # the caller's session (a test fixture, a notebook): use it, leave it running
    if address is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        ray.init(num_cpus=cores, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level=_log_level)
    else:
        ray.init(address=address, logging_level=_log_level)
    return True


@contextlib.contextmanager
def _session(address: str | None) -> Iterator[Any]:
    """Ray, connected to ``address`` (or a local cluster) for the block; a failed Ray job becomes
    one :class:`TinyViTError`. Disconnects after, unless the caller's session was already up."""
    connected = _connect(address)
    ray = _ray()
    try:
        yield ray
    except ray.exceptions.RayError as e:
        cause = getattr(e, "cause", None)
        raise TinyViTError(f"the Ray job failed: {_last_line(cause if cause is not None else e)}") from e
    finally:
        if connected:
            ray.shutdown()


def _check_model(model: str | os.PathLike, address: str | None, kind: str, options: ModelOptions) -> None:
    """Before any cluster starts, a bad model fails in one line. For a job on this machine the
    model is loaded here once (a bad name, a missing file, a checkpoint that does not say its
    preprocessing, an embedding model asked for classes; the actors then find the weights in the
    cache); for a cluster, where the nodes fetch the weights themselves, a zoo name is resolved."""
    if address is None:
        o = replace(options, device=None, dtype=None, fast=False)  # the actors' concern
        runner_for(model, o, task="classify" if kind == "predict" else "embed")
    else:
        parse_spec(model)  # an unknown zoo name fails now, naming the close ones


def _failed_rows(table: pa.Table, column: str) -> pa.Table:
    """The rows of a batch whose error column is set."""
    import pyarrow.compute as pc

    return table.filter(pc.is_valid(table.column(column)))


def _read_back(out: str, error_column: str, max_errors: int) -> tuple[int, int, list[tuple[str, str]]]:
    """(rows, failed rows, the first ``max_errors`` (path, error)) of the Parquet written: a local
    folder read here, with pyarrow (two columns); another filesystem's through Ray."""
    if not _is_uri(out):
        import pyarrow.dataset as pads

        data = pads.dataset(out, format="parquet")
        failed = data.to_table(columns=["path", error_column], filter=pads.field(error_column).is_valid())
        pairs = zip(failed.column("path").to_pylist(), failed.column(error_column).to_pylist(), strict=True)
        return data.count_rows(), failed.num_rows, [(str(p), str(e)) for p, e in pairs][:max_errors]
    ray = _ray()
    written = ray.data.read_parquet(out).select_columns(["path", error_column])
    failed_ds = written.map_batches(_failed_rows, fn_args=(error_column,), batch_format="pyarrow").materialize()
    failed = failed_ds.count()
    errors = [(str(r["path"]), str(r[error_column])) for r in failed_ds.take(max_errors)] if failed else []
    return written.count(), failed, errors


def run_job(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    output: str | os.PathLike,
    model: str | os.PathLike = DEFAULT_MODEL,
    *,
    kind: str = "predict",
    address: str | None = None,
    actors: int = 1,
    num_gpus: float = 0,
    num_cpus: float | None = None,
    batch_size: int = 32,
    overwrite: bool = False,
    max_errors: int = 100,
    options: ModelOptions | None = None,
    **task: Any,
) -> JobSummary:
    """Classify (``kind="predict"``) or embed (``kind="embed"``) files on Ray Data and write the
    rows to the Parquet folder ``output``: one row per input, with its absolute ``path``.

    ``inputs``: files, folders, glob patterns, or URIs (see :func:`job_inputs`). ``address``: a
    Ray cluster (``"auto"``, ``"host:6379"``, ``"ray://host:10001"``); None starts a local one on
    this machine for the job (or uses the session already initialised in this process). Local
    paths and a checkpoint path must be visible to every node of a cluster (a shared filesystem),
    and the nodes need tinyvit installed.

    ``actors``: model replicas (``ActorPoolStrategy(size=actors)``); ``num_gpus``: GPUs per actor (0: CPU; 0.5: two
    actors per GPU); ``num_cpus``: CPUs per actor (default Ray's, 1): torch's threads on the CPU,
    decoding threads on a GPU. ``batch_size``: images per forward pass. ``options``: the
    :class:`~tinyvit.run.options.ModelOptions`; ``task``: the other :class:`Classifier` /
    :class:`Embedder` arguments (``top_k``, ``normalize``, ``column``, ``prefix``…). ``output`` must
    not hold files unless ``overwrite``. A local ``output`` appears only when the job is done (see
    :func:`_written_whole`); another filesystem's keeps what a failed job wrote.

    Returns the :class:`JobSummary` (rows, failed rows and their errors), read back from the
    Parquet written.
    """
    options = options or ModelOptions()
    cls = _job_class(kind, model, task, actors=actors, batch_size=batch_size)
    out = _check_output(output, overwrite)
    files, uris = job_inputs(inputs)
    if isinstance(model, (str, os.PathLike)):
        _check_model(model, address, kind, options)

    start = time.perf_counter()
    with _session(address) as ray:
        if uris and address is None:
            _check_cpus(ray, actors, num_cpus)
        ds = _dataset(ray, files, uris).map_batches(
            cls, fn_constructor_kwargs={"model": model, "options": options, **task}, batch_size=batch_size,
            compute=ray.data.ActorPoolStrategy(size=actors), num_gpus=num_gpus or None, num_cpus=num_cpus,
        )  # fmt: skip
        with _written_whole(out, overwrite) as target, _without_restart_notice():
            # a local folder is written new (see _written_whole); another filesystem's is checked by Ray
            mode = "append" if target != out else ("overwrite" if overwrite else "error")
            ds.write_parquet(target, mode=ray.data.SaveMode(mode))
        rows, failed, errors = _read_back(out, task.get("prefix", "") + "error", max_errors)
    if not uris and rows != len(files):
        raise TinyViTError(f"{out}: {rows} rows written for {len(files)} inputs")
    return JobSummary(out, rows, failed, errors, time.perf_counter() - start)


def _dataset(ray: Any, files: list[str], uris: bool) -> Any:
    """URIs: the files' bytes, read by Ray (image extensions only); local files: their paths."""
    if uris:
        exts = sorted(s.lstrip(".") for s in IMAGE_SUFFIXES)
        return ray.data.read_binary_files(files, include_paths=True, file_extensions=exts)
    return ray.data.from_items([{"path": f} for f in files])


def _job_class(kind: str, model: Any, task: dict[str, Any], *, actors: int, batch_size: int) -> type:
    """The callable class of a job, its arguments checked before anything starts."""
    if kind not in ("predict", "embed"):
        raise TinyViTError(f"kind must be 'predict' or 'embed', got {kind!r}")
    for name, value in (("actors", actors), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise TinyViTError(f"{name} must be a whole number >= 1, got {value!r}")
    cls = Classifier if kind == "predict" else Embedder
    try:
        inspect.signature(cls).bind(model, **task)
        if unknown := sorted(set(task) - set(inspect.signature(cls).parameters)):
            raise TypeError(f"unexpected argument(s) {', '.join(unknown)}")
    except TypeError as e:
        raise TinyViTError(f"{kind}: {e}") from None
    return cls


# What Ray's core worker logs, in this process, for each actor Ray Data creates: Ray Data's actors are
# restartable (its default, which tinyvit keeps: a killed actor is replaced and its batches rerun) and
# their constructor arguments are in the object store, where Ray Data keeps them for the whole job.
RESTART_NOTICE = b"has constructor arguments in the object store and max_restarts > 0"


@contextlib.contextmanager
def _without_restart_notice() -> Iterator[None]:
    """Within the block, this process's stderr (file descriptor 2, where Ray's C++ core writes)
    goes through a pipe that drops the lines holding :data:`RESTART_NOTICE` and passes the rest
    through unchanged (a partial line at once, unless it may be such a log line: ``[time …``)."""
    sys.stderr.flush()
    out, saved = os.dup(2), os.dup(2)
    read, write = os.pipe()
    os.dup2(write, 2)
    os.close(write)
    pump = threading.Thread(target=_pass_lines, args=(read, out), name="tinyvit-stderr", daemon=True)
    pump.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the pump reads to its end, then stops
        os.close(saved)
        pump.join(5)


def _pass_lines(read: int, out: int) -> None:
    """Copy ``read`` to ``out`` without the lines holding :data:`RESTART_NOTICE`; close both at the end."""
    pending = b""
    try:
        while chunk := os.read(read, 1 << 16):
            *lines, pending = (pending + chunk).split(b"\n")
            kept = b"".join(line + b"\n" for line in lines if RESTART_NOTICE not in line)
            if pending and not pending.startswith(b"["):
                kept, pending = kept + pending, b""
            if kept:
                os.write(out, kept)
        if pending and RESTART_NOTICE not in pending:
            os.write(out, pending)
    except OSError as e:  # stderr itself is gone: nothing left to write to
        logging.getLogger(__name__).debug("stderr pass-through stopped: %s", e)
    finally:
        os.close(read)
        os.close(out)


@contextlib.contextmanager
def _written_whole(out: str, overwrite: bool) -> Iterator[str]:
    """Where to write a job's output: for a local folder, a hidden one beside it that takes its
    name when the block ends well (replacing ``out`` when ``overwrite``) and is removed when it
    does not (an error, Ctrl-C). Another filesystem's ``out`` is written in place."""
    if _is_uri(out):
        yield out
        return
    final = Path(out)
    partial = final.parent / f".{final.name}.partial-{os.getpid()}"
    try:
        yield str(partial)
        if final.exists() and overwrite:
            shutil.rmtree(final)
        os.replace(partial, final)  # over a missing or empty folder
    finally:
        shutil.rmtree(partial, ignore_errors=True)


_log_level = logging.INFO  # Ray's driver logging (ray.init's default); quiet_logs lowers it


def quiet_logs() -> None:
    """Ray's own logging cut to warnings and errors, and no Ray Data progress report where stderr
    is not a terminal: for the command line, whose output is tinyvit's lines."""
    import ray.data

    global _log_level
    _log_level = logging.WARNING
    logging.getLogger("ray").setLevel(logging.WARNING)
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its warnings: progress bars are off, and such
    # said on every start of a local cluster, which tinyvit starts with token authentication on
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    ray.data.DataContext.get_current().enable_progress_bars = sys.stderr.isatty()


def _check_output(output: str | os.PathLike, overwrite: bool) -> str:
    """The output folder: a local one must be a folder, empty unless ``overwrite``."""
    out = os.fspath(output)
    if not _is_uri(out) and Path(out).exists():
        if not Path(out).is_dir():
            raise TinyViTError(f"{out!r} is a file; the output is a folder of Parquet files")
        if any(Path(out).iterdir()) and not overwrite:
            raise TinyViTError(f"{out!r} is not empty; choose another folder, or overwrite it (--overwrite)")
    return out


def _check_cpus(ray: Any, actors: int, num_cpus: float | None) -> None:
    """On this machine, the actors must leave a CPU for the tasks that read the files, or those
    would wait forever."""
    cpus = ray.cluster_resources().get("CPU", 0)
    if actors * (num_cpus if num_cpus is not None else 1) >= cpus:
        raise TinyViTError(
            f"{actors} actor(s) x {num_cpus or 1} CPU(s) take all {cpus:g} CPUs of this machine, and reading the "
            "files needs one: use fewer actors or CPUs per actor"
        )


def _last_line(e: BaseException) -> str:
    """A Ray error's type and last line (where Ray's long message says what failed), not the
    whole message as :func:`tinyvit.core.errors.one_line` gives it."""
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[-1] if lines else ''}"
