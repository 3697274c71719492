"""ONNX export: a self-describing ``.onnx`` file of a tinyvit model, checked against tinyvit.

The graph takes ``pixel_values`` (B, 3, H, W) float32 — the normalised tensor that
:func:`tinyvit.preprocess` makes — and gives ``logits`` (B, num_classes) float32 (``features``,
the class-token feature, for a model without a head). The batch size is always dynamic. With
``dynamic_size=True`` so are H and W. The exporter traces the model's own ``forward``, which
handles any input size without branching on it (see ``model.py``), so the graph computes what the
eager model computes at every size; without ``dynamic_size`` the graph is frozen at the trained
size and ONNX Runtime rejects other sizes. This module adds only what exporting needs: the dtype,
the opset and exporter, the metadata, and the check against ONNX Runtime.

``float16`` stores the weights and computes in half precision: half the file, logits within ~2e-3 of
float32 (ONNX Runtime's CPU provider runs it, at about float32 speed; it is meant for GPUs). Input
and output stay float32.

The metadata (``metadata_props``) carries the export record, the architecture and, when the model
knows them, its class names, preprocessing and weights record; :func:`read_onnx_metadata` reads it
back.

onnx, onnxruntime and onnxscript are imported only here and only when used:
``pip install "tinyvit[onnx]"``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tinyvit import __version__
from tinyvit.core.errors import TinyViTError
from tinyvit.core.fsutil import atomic_path
from tinyvit.images.spec import SizeRule
from tinyvit.models._linear import PackedLinear
from tinyvit.models.vit import VisionTransformer
from tinyvit.run.options import canonical_dtype

__all__ = ["EXPORT_KEY", "check_onnx", "default_check_sizes", "export_onnx", "export_size", "read_onnx_metadata"]

EXPORT_KEY = "tinyvit.export"  # metadata key of the export record (JSON)
CONFIG_KEY = "tinyvit.config"  # the architecture, ViTConfig.to_dict() as JSON
RESERVED_KEYS = (EXPORT_KEY, CONFIG_KEY, "tinyvit.version")
INPUT_NAME = "pixel_values"
DTYPES = {"float32": torch.float32, "float16": torch.float16}  # what an export may hold
MIN_OPSET = 14  # scaled_dot_product_attention needs 14 (pytorch#96944)
MIN_DYNAMO_OPSET = 18  # the dynamo exporter writes opset >= 18; lower ones use the TorchScript exporter
MAX_PROTO_BYTES = 2**31 - 1  # one protobuf message, hence one .onnx file without external data
INSTALL_HINT = 'pip install "tinyvit[onnx]"'


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise TinyViTError(f"ONNX export needs the package {module!r}, which is not installed: {INSTALL_HINT}") from e


# ---------------------------------------------------------------------------------------------
# What the graph computes


class _Float32IO(nn.Module):
    """The model with float32 input and output whatever its weights' dtype (the graph's contract)."""

    def __init__(self, model: VisionTransformer):
        super().__init__()
        self.model = model
        self.dtype = next(model.parameters()).dtype
        self.training = False  # only this wrapper's flag: the model's own is left as it is

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values.to(self.dtype)).float()


# ---------------------------------------------------------------------------------------------
# Export


def export_onnx(
    model: VisionTransformer,
    path: str | os.PathLike,
    *,
    dynamic_size: bool = False,
    dtype: str = "float32",
    metadata: Mapping[str, str] | None = None,
    opset: int | None = None,
) -> Path:
    """Write ``model`` as an ONNX file at ``path`` (atomically) and return the path.

    - ``dynamic_size``: any input height and width; otherwise only the size the model's own
      preprocessing makes (:func:`export_size`: its crop, else the trained size). The batch size is
      always dynamic.
    - ``dtype``: ``"float32"`` or ``"float16"`` (weights and compute; input and output stay float32).
    - ``metadata``: extra ``metadata_props`` (str → str), added to tinyvit's own keys: the export
      record (``tinyvit.export``), the architecture (``tinyvit.config``), the version and, when the
      model carries them, ``class_names`` and ``preprocess`` (JSON) and ``tinyvit.weights``.
      Given keys replace the model's; the ``tinyvit.export`` / ``.config`` / ``.version`` keys are
      reserved.
    - ``opset``: None for the exporter's default (20); 18 and above use torch's dynamo exporter,
      14 to 17 the legacy TorchScript exporter.

    The model itself is not changed (a float16 export works on a converted copy). Nothing is
    written when anything fails. Check the file with :func:`check_onnx`.
    """
    path, dtype_name = Path(path), _dtype_name(dtype)
    _check_target(path, opset, dynamic_size and not model.size_rule.any_size_graph)
    props = _metadata(model, metadata)
    size = export_size(model)
    traced = _converted(model, DTYPES[dtype_name], _traced_rule(model, dynamic_size, size))
    proto, exporter = _trace(traced, dynamic_size, opset, size)
    record = {
        "format": 1,
        "input": INPUT_NAME,
        "output": _output_name(model),
        "layout": "NCHW",
        "input_dtype": "float32",
        "dtype": dtype_name,
        "dynamic_batch": True,
        "dynamic_size": bool(dynamic_size),
        "image_size": [size, size],
        "patch_size": model.config.patch_size,
        "exporter": exporter,
        "opset": _opset_of(proto),
        "torch": torch.__version__.split("+")[0],
    }
    _finish(proto, {EXPORT_KEY: json.dumps(record, separators=(",", ":")), **props}, record)
    if proto.ByteSize() > MAX_PROTO_BYTES:
        raise TinyViTError(
            f"the model is too large for a single ONNX file ({proto.ByteSize() / 2**30:.1f} GiB > 2 GiB); "
            "external data files are not supported"
        )
    onnx = _require("onnx")
    try:
        with atomic_path(path) as tmp:
            onnx.save_model(proto, str(tmp))
    except OSError as e:
        raise TinyViTError(f"cannot write {str(path)!r}: {e}") from e
    return path


def _check_target(path: Path, opset: int | None, size_dependent: bool = False) -> None:
    """Before anything is traced: the folder exists, the opset is one attention can be written in,
    the exporter's packages are installed, and (``size_dependent``) a graph can follow the sizes."""
    if size_dependent:
        raise TinyViTError(
            "dynamic_size: DINOv2's own resize rule (a scale factor, skipped at the trained grid) depends on the "
            "input size in a way a graph cannot follow; export at the trained size, or load the weights in the "
            "timm or transformers layout (antialiased / plain bicubic resize)"
        )
    if not path.parent.is_dir():
        raise TinyViTError(f"cannot write {str(path)!r}: the folder {str(path.parent)!r} does not exist")
    if opset is not None and (not isinstance(opset, int) or isinstance(opset, bool) or opset < MIN_OPSET):
        raise TinyViTError(f"opset must be an int >= {MIN_OPSET} (attention needs it), got {opset!r}")
    for module in ("onnx", "onnxscript") if opset is None or opset >= MIN_DYNAMO_OPSET else ("onnx",):
        _require(module)


def export_size(model: VisionTransformer) -> int:
    """The side of the images the model is given: its preprocessing's crop (a DINOv2 trained at
    518 px is run at 224), or the trained size when the model carries no preprocessing."""
    spec = getattr(getattr(model, "weights", None), "preprocess", None)
    return spec.crop if spec is not None else model.config.image_size


def _output_name(model: VisionTransformer) -> str:
    """``logits`` (a classifier), ``embedding`` (an embedding model's record says so), or ``features``."""
    record = getattr(model, "weights", None)
    if getattr(record, "output", None) == "embedding":
        return "embedding"
    return "logits" if model.config.num_classes else "features"


def _trace(model: VisionTransformer, dynamic_size: bool, opset: int | None, size: int) -> tuple[Any, str]:
    """The ONNX graph of ``model.forward`` (float32 in and out) and the exporter that made it:
    static at ``size`` x ``size``, or traced at the trained size with any size allowed."""
    wrapper = _Float32IO(model)
    size = model.config.image_size if dynamic_size else size
    example = torch.randn(2, model.config.in_chans, size, size, generator=torch.Generator().manual_seed(0))
    with _quiet_exporter():
        try:
            if opset is None or opset >= MIN_DYNAMO_OPSET:
                return _export_dynamo(wrapper, example, _output_name(model), dynamic_size, opset), "dynamo"
            return _export_torchscript(wrapper, example, _output_name(model), dynamic_size, opset), "torchscript"
        except TinyViTError:
            raise
        except Exception as e:  # the exporters raise many types; one message, the cause chained
            raise TinyViTError(f"ONNX export of the model failed: {type(e).__name__}: {e}") from e


def _dtype_name(dtype: str) -> str:
    try:
        name = canonical_dtype(dtype)
    except TinyViTError:
        name = None
    if name not in DTYPES:
        raise TinyViTError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return name


def _traced_rule(model: VisionTransformer, dynamic_size: bool, size: int) -> SizeRule:
    """The size rule the graph is traced with: the model's, except that a static graph at the
    trained size resamples the position embedding with plain bicubic instead of the antialiased
    one — both are the identity there, bit for bit, and the TorchScript exporter (opsets 14-17)
    has no antialiased resize."""
    rule = model.size_rule
    if not dynamic_size and size == model.config.image_size and rule.resample == "bicubic_aa":
        return SizeRule(rule.pad, "bicubic")
    return rule


def _converted(model: VisionTransformer, dtype: torch.dtype, rule: SizeRule) -> VisionTransformer:
    """The model itself when it is already on the CPU in ``dtype`` with ``rule`` and runs torch's own
    kernels, else a converted copy (built on the meta device and assigned the tensors: one copy, no
    random initialisation) — a model on oneDNN's prepacked path (``run/cpu.py``) is traced as ``nn.Linear``."""
    state = model.state_dict()
    as_is = all(t.dtype == dtype and t.device.type == "cpu" for t in state.values())
    if as_is and rule == model.size_rule and not any(isinstance(m, PackedLinear) for m in model.modules()):
        return model
    state = {k: v.detach() for k, v in state.items()}
    return VisionTransformer.from_state_dict(model.config, state, size_rule=rule, device=torch.device("cpu"),
                                             dtype=dtype)  # fmt: skip


def _export_dynamo(wrapper: nn.Module, example: torch.Tensor, output: str, dynamic_size: bool, opset: int | None):
    if "dynamo" not in inspect.signature(torch.onnx.export).parameters:
        raise TinyViTError(
            f"torch {torch.__version__} has no dynamo ONNX exporter: use torch >= 2.6, or opset 14-17 "
            "(the legacy TorchScript exporter)"
        )
    dims = {0: torch.export.Dim("batch", min=1)}
    if dynamic_size:
        dims.update({2: torch.export.Dim("height", min=1), 3: torch.export.Dim("width", min=1)})
    program = torch.onnx.export(
        wrapper,
        (example,),
        dynamo=True,
        opset_version=opset,
        input_names=[INPUT_NAME],
        output_names=[output],
        dynamic_shapes={INPUT_NAME: dims},
        optimize=True,
        verbose=False,
    )
    return program.model_proto


def _export_torchscript(wrapper: nn.Module, example: torch.Tensor, output: str, dynamic_size: bool, opset: int):
    import io

    onnx = _require("onnx")
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_size else {0: "batch"}
    buffer = io.BytesIO()
    kwargs = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    torch.onnx.export(
        wrapper,
        (example,),
        buffer,
        opset_version=opset,
        input_names=[INPUT_NAME],
        output_names=[output],
        dynamic_axes={INPUT_NAME: axes, output: {0: "batch"}},
        do_constant_folding=True,
        **kwargs,
    )
    return onnx.load_from_string(buffer.getvalue())


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporters' chatter that says nothing about this model (torchvision operators
    not registered, deprecation notices of torch internals and of the legacy exporter)."""
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
            warnings.filterwarnings("ignore", message=r".*TorchScript-based ONNX export.*", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=r".*legacy TorchScript.*", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx\.")
            yield
    finally:
        logger.setLevel(level)


def _opset_of(proto: Any) -> int:
    return next(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx"))


def _finish(proto: Any, props: dict[str, str], record: dict) -> None:
    """Drop the exporter's per-node debugging metadata (stack traces with local paths, FX node
    text), then set the model's metadata and description."""
    graph = proto.graph
    del graph.metadata_props[:]
    for group in (graph.node, graph.input, graph.output, graph.value_info, graph.initializer):
        for item in group:
            del item.metadata_props[:]
    for node in graph.node:
        node.doc_string = ""
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    size = "any height and width" if record["dynamic_size"] else "{}x{} only".format(*record["image_size"])
    proto.doc_string = (
        f"tinyvit Vision Transformer: {INPUT_NAME} (batch, 3, height, width) float32, normalised as the "
        f"'preprocess' metadata says, {size} -> {record['output']} (batch, n) float32; {record['dtype']} weights"
    )


def _metadata(model: VisionTransformer, extra: Mapping[str, str] | None) -> dict[str, str]:
    """tinyvit's keys (all but the export record, added after the export), the model's own
    description when it has one, then ``extra``."""
    props = {"tinyvit.version": __version__, CONFIG_KEY: json.dumps(model.config.to_dict(), separators=(",", ":"))}
    props.update(_model_description(model))
    for key, value in (extra or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TinyViTError(f"ONNX metadata keys and values must be strings, got {key!r}: {type(value).__name__}")
        if key in RESERVED_KEYS:
            raise TinyViTError(f"ONNX metadata key {key!r} is written by tinyvit itself; choose another name")
        props[key] = value
    return props


def _model_description(model: VisionTransformer) -> dict[str, str]:
    """``class_names``, ``preprocess`` and ``tinyvit.weights`` from the model's weights record
    (``model.weights``) or its older ``model.info``, as far as they are known."""
    props: dict[str, str] = {}
    record = getattr(model, "weights", None)
    if record is None:
        record = getattr(model, "info", None)
    if record is None:
        return props
    to_json = getattr(record, "to_json", None)
    if callable(to_json):
        props["tinyvit.weights"] = _portable(to_json())
    names = getattr(record, "categories", None)
    if isinstance(names, Sequence) and not isinstance(names, str) and all(isinstance(n, str) for n in names):
        props["class_names"] = json.dumps(list(names), ensure_ascii=False)
    preprocess = getattr(record, "preprocess", None)
    if preprocess is not None and callable(getattr(preprocess, "to_dict", None)):
        props["preprocess"] = json.dumps(preprocess.to_dict(), separators=(",", ":"))
    return props


def _portable(record_json: str) -> str:
    """The weights record without the local file the tensors were read from (not portable; the
    safetensors files tinyvit writes leave it out too)."""
    try:
        record = json.loads(record_json)
    except ValueError:
        return record_json
    source = record.get("source") if isinstance(record, dict) else None
    if not isinstance(source, dict) or source.pop("path", None) is None:
        return record_json
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


# ---------------------------------------------------------------------------------------------
# Reading and checking


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file, as a dict (JSON values stay strings)."""
    onnx = _require("onnx")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (OSError, ValueError) as e:
        raise TinyViTError(f"cannot read the ONNX file {str(path)!r}: {e}") from e
    except Exception as e:  # protobuf's DecodeError and friends: not an ONNX file
        raise TinyViTError(f"{str(path)!r} is not a readable ONNX file: {type(e).__name__}: {e}") from e
    return {p.key: p.value for p in proto.metadata_props}


def default_check_sizes(record: Mapping[str, Any]) -> list[tuple[int, int]]:
    """The export size, and for a dynamic-size file also a non-square size that is not a multiple of
    the patch (for 384 px: 289x481)."""
    h, w = record["image_size"]
    sizes = [(h, w)]
    if record.get("dynamic_size"):
        sizes.append((h * 3 // 4 + 1, w * 5 // 4 + 1))
    return sizes


def check_onnx(
    model: VisionTransformer,
    path: str | os.PathLike,
    sizes: Sequence[tuple[int, int]] | None = None,
    *,
    batch: int = 2,
    seed: int = 0,
) -> dict[tuple[int, int], float]:
    """Run the ONNX file with ONNX Runtime (CPU) and ``model`` eagerly on the same random input of
    ``batch`` images at each (height, width) of ``sizes`` (default: :func:`default_check_sizes`);
    returns the max |Δ| of the outputs per size.

    Compare against the model the file was exported from: a float16 file checked against a float32
    model gives the float16 deviation. A size that a static-size file does not accept raises
    TinyViTError.
    """
    import numpy as np

    ort = _require("onnxruntime")
    record = json.loads(read_onnx_metadata(path).get(EXPORT_KEY, "null")) or {
        "image_size": [export_size(model)] * 2,
        "dynamic_size": False,
    }
    sizes = list(sizes) if sizes is not None else default_check_sizes(record)
    session = _session(ort, path)
    input_name = session.get_inputs()[0].name
    param = next(model.parameters())
    generator = torch.Generator().manual_seed(seed)
    deviations: dict[tuple[int, int], float] = {}
    for h, w in sizes:
        x = torch.randn(batch, model.config.in_chans, h, w, generator=generator)
        try:
            got = session.run(None, {input_name: x.numpy()})[0]
        except Exception as e:  # onnxruntime's own exception types
            raise TinyViTError(f"ONNX Runtime cannot run {str(path)!r} at {h}x{w}: {e}") from e
        with torch.inference_mode():
            want = model(x.to(param.device, param.dtype)).float().cpu().numpy()
        deviations[(h, w)] = float(np.abs(got.astype(np.float32) - want).max())
    return deviations


def _session(ort: Any, path: str | os.PathLike) -> Any:
    options = ort.SessionOptions()
    # ONNX Runtime's threads otherwise spin after each run, taking the CPU from the torch run that follows
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own exception types
        raise TinyViTError(f"ONNX Runtime cannot load {str(path)!r}: {e}") from e
