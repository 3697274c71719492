"""ONNX export: ONNX Runtime gives tinyvit's logits at the trained size and at others, the metadata
round-trips, the file is written atomically.

The main checks use the B/32-384 architecture at depth 4 with random weights (one dynamic-size and
one static export; every block is the same graph, so depth adds export time, not coverage); the
option tests use it at depth 2.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from tinyvit.core.errors import TinyViTError
from tinyvit.export import EXPORT_KEY, check_onnx, export_onnx, read_onnx_metadata
from tinyvit.images.spec import PreprocessSpec, SizeRule
from tinyvit.models.vit import VisionTransformer, ViTConfig, resample_pos_embed

B32_384 = ViTConfig(image_size=384, patch_size=32, embed_dim=768, depth=12, num_heads=12, num_classes=1000)
B32_MAIN = replace(B32_384, depth=4)
B32_SHALLOW = replace(B32_384, depth=2)
TINY = ViTConfig(image_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=2, num_classes=10)
TOL = 1e-4  # float32, ONNX Runtime vs tinyvit (measured ~3e-6)


MMPRETRAIN_RULE = SizeRule(pad=True, resample="bicubic")


def make_model(config: ViTConfig, seed: int = 0, rule: SizeRule = MMPRETRAIN_RULE) -> VisionTransformer:
    """A random model; other sizes as mmpretrain handles them (zero padding, plain bicubic) unless
    ``rule`` says otherwise."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return VisionTransformer(config, rule).init_weights().eval()


def images(batch: int, h: int, w: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


def max_dev(session: ort.InferenceSession, model: VisionTransformer, x: torch.Tensor) -> float:
    got = session.run(None, {"pixel_values": x.numpy()})[0]
    with torch.inference_mode():
        want = model(x).numpy()
    assert got.shape == want.shape and got.dtype == np.float32
    return float(np.abs(got - want).max())


def session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


@pytest.fixture(scope="module")
def b32():
    return make_model(B32_MAIN)


@pytest.fixture(scope="module")
def b32_dynamic(b32, tmp_path_factory):
    path = export_onnx(b32, tmp_path_factory.mktemp("onnx") / "b32_dynamic.onnx", dynamic_size=True)
    return path, session(path)


@pytest.fixture(scope="module")
def b32_static(b32, tmp_path_factory):
    path = export_onnx(b32, tmp_path_factory.mktemp("onnx") / "b32_static.onnx")
    return path, session(path)


@pytest.fixture(scope="module")
def shallow():
    return make_model(B32_SHALLOW)


# ---------------------------------------------------------------------------------------------
# Why the dynamic graph is exact: the one forward pads and resamples unconditionally, which at the
# trained size changes nothing, bit for bit


def test_the_unconditional_pad_and_resample_change_nothing_at_the_trained_size(shallow):
    x = images(2, 384, 384)
    with torch.inference_mode():
        for dtype in (torch.float32, torch.bfloat16):
            pe = shallow.pos_embed.to(dtype)
            assert torch.equal(resample_pos_embed(pe, (12, 12), (12, 12)), pe)
        # the forward pass written out without the pad and the resample: what timm computes
        h = shallow.patch_embed.proj(x).flatten(2).transpose(1, 2)
        h = torch.cat((shallow.cls_token.expand(2, -1, -1), h), dim=1) + shallow.pos_embed
        for block in shallow.blocks:
            h, _ = block(h)
        assert torch.equal(shallow(x), shallow.head(shallow.norm(h)[:, 0]))


def test_bicubic_resize_to_the_same_size_is_the_identity(tmp_path):
    # half_pixel with scale 1 puts every source coordinate on a pixel: cubic weights (0, 1, 0, 0)
    grid = torch.randn(1, 768, 12, 12, generator=torch.Generator().manual_seed(2))
    assert torch.equal(torch.nn.functional.interpolate(grid, size=(12, 12), mode="bicubic", align_corners=False), grid)
    h = onnx.helper
    node = h.make_node(
        "Resize", ["x", "", "", "sizes"], ["y"], mode="cubic", cubic_coeff_a=-0.75,
        coordinate_transformation_mode="half_pixel",
    )  # fmt: skip
    graph = h.make_graph(
        [node],
        "resize",
        [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 768, 12, 12])],
        [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(np.array([1, 768, 12, 12], np.int64), "sizes")],
    )
    onnx.save_model(h.make_model(graph, opset_imports=[h.make_opsetid("", 20)]), str(tmp_path / "r.onnx"))
    (y,) = session(tmp_path / "r.onnx").run(None, {"x": grid.numpy()})
    assert np.array_equal(y, grid.numpy())


# ---------------------------------------------------------------------------------------------
# Dynamic size (full B/32-384)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("size", [(384, 384), (224, 224), (320, 448), (300, 500), (20, 70)], ids=str)
def test_dynamic_size_export_gives_tinyvit_logits(b32, b32_dynamic, size, batch):
    _, sess = b32_dynamic
    assert max_dev(sess, b32, images(batch, *size)) <= TOL


def test_dynamic_size_graph_resizes_like_torch_bicubic(b32_dynamic):
    path, _ = b32_dynamic
    model = onnx.load(str(path), load_external_data=False)
    onnx.checker.check_model(model)
    assert dims(model.graph.input[0]) == ["batch", 3, "height", "width"]
    assert dims(model.graph.output[0]) == ["batch", 1000]
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    (resize,) = [n for n in model.graph.node if n.op_type == "Resize"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in resize.attribute}
    assert attrs["mode"] == b"cubic" and attrs["coordinate_transformation_mode"] == b"half_pixel"
    assert attrs["cubic_coeff_a"] == -0.75 and attrs.get("antialias", 0) == 0
    assert attrs.get("exclude_outside", 0) == 0
    # no stack traces or local paths left from the exporter
    assert not any(n.metadata_props for n in model.graph.node) and not model.graph.metadata_props


def test_check_onnx_reports_deviation_per_size(b32, b32_dynamic):
    path, _ = b32_dynamic
    deviations = check_onnx(b32, path, batch=1)
    assert list(deviations) == [(384, 384), (289, 481)]  # the export size; non-square, not whole patches
    assert all(0 <= d <= TOL for d in deviations.values())


# ---------------------------------------------------------------------------------------------
# Static size


@pytest.mark.parametrize("batch", [1, 3])
def test_static_export_gives_tinyvit_logits_at_the_export_size(b32, b32_static, batch):
    _, sess = b32_static
    assert max_dev(sess, b32, images(batch, 384, 384)) <= TOL


def test_static_export_rejects_other_sizes(b32, b32_static):
    path, sess = b32_static
    model = onnx.load(str(path), load_external_data=False)
    assert dims(model.graph.input[0]) == ["batch", 3, 384, 384]
    # the position embedding is resampled to a fixed size (the identity): nothing depends on the input's size
    constants = {i.name for i in model.graph.initializer} | {o for n in model.graph.node if n.op_type == "Constant"
                                                             for o in n.output}  # fmt: skip
    resizes = [n for n in model.graph.node if n.op_type == "Resize"]
    assert all(n.input[3] in constants for n in resizes)
    assert json.loads(read_onnx_metadata(path)[EXPORT_KEY])["dynamic_size"] is False
    with pytest.raises(Exception, match="(?i)invalid dimensions"):
        sess.run(None, {"pixel_values": images(1, 224, 224).numpy()})
    with pytest.raises(TinyViTError, match="224x224"):
        check_onnx(b32, path, [(224, 224)], batch=1)


# ---------------------------------------------------------------------------------------------
# Metadata


def test_metadata_round_trips(tmp_path):
    model = make_model(TINY)
    spec = PreprocessSpec(resize=73, crop=64, interpolation="bicubic", mean=(127.5,) * 3, std=(127.5,) * 3)
    record = {"format": 1, "source": {"kind": "hub", "repo_id": "o/r", "path": "/home/me/.cache/m.safetensors"}}
    model.weights = SimpleNamespace(  # duck-typed weights record: class names, preprocessing, JSON
        categories=tuple(f"class {i}" for i in range(10)), preprocess=spec, to_json=lambda: json.dumps(record)
    )
    extra = {"author": "Zoë ✓", "license": "Apache-2.0", "class_names": json.dumps(list("abcdefghij"))}
    path = export_onnx(model, tmp_path / "m.onnx", dynamic_size=True, metadata=extra)
    meta = read_onnx_metadata(path)
    assert meta["author"] == "Zoë ✓" and meta["license"] == "Apache-2.0"
    assert json.loads(meta["class_names"]) == list("abcdefghij")  # given keys replace the model's
    assert PreprocessSpec.from_dict(json.loads(meta["preprocess"])) == spec
    assert json.loads(meta["tinyvit.weights"]) == {"format": 1, "source": {"kind": "hub", "repo_id": "o/r"}}  # no path
    assert ViTConfig.from_dict(json.loads(meta["tinyvit.config"])) == TINY
    record = json.loads(meta[EXPORT_KEY])
    assert record["input"] == "pixel_values" and record["output"] == "logits"
    assert record["dynamic_size"] is True and record["dtype"] == "float32" and record["image_size"] == [64, 64]
    assert record["exporter"] == "dynamo" and record["opset"] >= 18
    # what ONNX Runtime users see
    assert session(path).get_modelmeta().custom_metadata_map == meta


def test_model_description_comes_from_the_model(tmp_path):
    model = make_model(TINY)
    model.weights = SimpleNamespace(categories=tuple(f"c{i}" for i in range(10)), preprocess=None)
    meta = read_onnx_metadata(export_onnx(model, tmp_path / "m.onnx"))
    assert json.loads(meta["class_names"]) == [f"c{i}" for i in range(10)]
    assert "preprocess" not in meta and "tinyvit.weights" not in meta


@pytest.mark.parametrize(
    "metadata, message",
    [({EXPORT_KEY: "{}"}, "reserved|tinyvit itself"), ({"n": 3}, "must be strings"), ({1: "x"}, "must be strings")],
)
def test_bad_metadata_is_refused_before_exporting(tmp_path, metadata, message):
    with pytest.raises(TinyViTError, match=message):
        export_onnx(make_model(TINY), tmp_path / "m.onnx", metadata=metadata)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# Atomic write, errors


def test_failing_write_leaves_no_file(tmp_path, monkeypatch):
    def half_written(proto, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(proto.SerializeToString()[:1000])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx, "save_model", half_written)
    with pytest.raises(TinyViTError, match="cannot write .*No space left"):
        export_onnx(make_model(TINY), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []  # neither the file nor the temporary one


def test_written_file_has_the_usual_permissions(tmp_path):
    path = export_onnx(make_model(TINY), tmp_path / "m.onnx")
    probe = tmp_path / "probe"
    probe.write_bytes(b"")
    assert path.stat().st_mode & 0o777 == probe.stat().st_mode & 0o777  # as any new file: umask, not 0600


def test_failing_export_keeps_the_existing_file(tmp_path, monkeypatch):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"the previous export")

    def broken(*args, dynamo=True, **kwargs):
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(TinyViTError, match="ONNX export of the model failed: RuntimeError: exporter exploded"):
        export_onnx(make_model(TINY), path)
    assert path.read_bytes() == b"the previous export"
    assert list(tmp_path.iterdir()) == [path]


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(TinyViTError, match="does not exist"):
        export_onnx(make_model(TINY), tmp_path / "no" / "m.onnx")


@pytest.mark.parametrize("module", ["onnx", "onnxscript", "onnxruntime"])
def test_missing_extra_says_how_to_install(tmp_path, monkeypatch, module):
    model = make_model(TINY)
    path = export_onnx(model, tmp_path / "m.onnx") if module == "onnxruntime" else tmp_path / "m.onnx"
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(TinyViTError, match=r'pip install "tinyvit\[onnx\]"'):
        if module == "onnxruntime":
            check_onnx(model, path)
        else:
            export_onnx(model, path)


@pytest.mark.parametrize("kwargs", [{"dtype": "bfloat16"}, {"opset": 13}, {"opset": "20"}])
def test_bad_options_are_refused(tmp_path, kwargs):
    with pytest.raises(TinyViTError, match="dtype must be|opset must be"):
        export_onnx(make_model(TINY), tmp_path / "m.onnx", **kwargs)


# ---------------------------------------------------------------------------------------------
# Options (B/32-384 at depth 2)


@pytest.mark.parametrize("opset, exporter", [(17, "torchscript"), (23, "dynamo")])
def test_opsets_and_exporters(shallow, tmp_path, opset, exporter):
    path = export_onnx(shallow, tmp_path / "m.onnx", dynamic_size=True, opset=opset)
    record = json.loads(read_onnx_metadata(path)[EXPORT_KEY])
    assert record["exporter"] == exporter and record["opset"] == opset
    deviations = check_onnx(shallow, path, [(384, 384), (300, 500)], batch=2)
    assert max(deviations.values()) <= TOL


def test_float16_export_runs_on_cpu_near_float32(shallow, tmp_path):
    path = export_onnx(shallow, tmp_path / "m16.onnx", dynamic_size=True, dtype="float16")
    assert next(shallow.parameters()).dtype == torch.float32  # the model itself is not converted
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    weights = [t for t in model.graph.initializer if len(t.dims) == 2]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 in and out
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert json.loads(read_onnx_metadata(path)[EXPORT_KEY])["dtype"] == "float16"
    deviations = check_onnx(shallow, path, [(384, 384), (300, 500)], batch=2)  # vs float32 tinyvit
    assert all(1e-5 < d < 1e-2 for d in deviations.values()), deviations
    # against tinyvit in float16 itself the deviation is of the same order
    assert check_onnx(make_model(B32_SHALLOW).half(), path, [(384, 384)], batch=1)[(384, 384)] < 1e-2


def test_headless_model_exports_features(tmp_path):
    model = make_model(replace(TINY, num_classes=0))
    path = export_onnx(model, tmp_path / "f.onnx", dynamic_size=True)
    sess = session(path)
    assert sess.get_outputs()[0].name == "features"
    assert max_dev(sess, model, images(2, 50, 90)) <= TOL
