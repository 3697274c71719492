"""CLIP and SigLIP text: tokenizers id for id and text towers against open_clip and transformers.

Expected values come from the home libraries (tests/fixtures/text.*, tests/fixtures/text/, made by
scripts/make_text_fixtures.py; TEXT.md says what every field is): token ids on a corpus of 80,000
ImageNet prompts plus hard strings (compared by SHA-256 of the whole id matrix), and the text
embeddings of small random towers rebuilt from the checkpoints' own key names.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURES
from refdata import fill
from safetensors.torch import load_file

from tinyvit.core.errors import TinyViTError, WeightsError
from tinyvit.core.text_config import TextConfig
from tinyvit.models.text import TextTransformer
from tinyvit.text import tokenize as T
from tinyvit.weights import text_layouts as L

FX = json.loads((FIXTURES / "text.json").read_text(encoding="utf-8"))
REF = load_file(FIXTURES / "text.safetensors")
FILES = FIXTURES / "text"
SHIPPED = json.loads((Path(T.__file__).with_name("imagenet_zeroshot.json")).read_text(encoding="utf-8"))
TOL = 1e-5
ACTS = {"QuickGELU": "quick_gelu", "QuickGELUActivation": "quick_gelu", "GELU": "gelu",
        "GELUActivation": "gelu", "PytorchGELUTanh": "gelu_tanh", "GELUTanh": "gelu_tanh"}  # fmt: skip


def corpus() -> list[str]:
    """The fixture's corpus: its hard strings, then the shipped class names × OpenAI templates."""
    prompts = [t.format(c) for c in SHIPPED["classnames"] for t in SHIPPED["openai_templates"]]
    assert len(prompts) == FX["corpus"]["imagenet_prompts"] == 80_000
    return FX["corpus"]["hard_strings"] + prompts


def clip_vocab_files(folder: Path) -> None:
    """vocab.json + merges.txt of OpenAI's transformers repos, from the BPE file tinyvit ships."""
    vocab, merges = T.clip_bpe_vocab()
    rename = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {rename.get(k, k): v for k, v in vocab.items()}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                       encoding="utf-8")  # fmt: skip


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """The tokenizer folders the cases read (the ones too large to commit are derived or unzipped)."""
    tmp = tmp_path_factory.mktemp("text")
    (tmp / "vocab").mkdir()
    clip_vocab_files(tmp / "vocab")
    (tmp / "json").mkdir()
    packed = (FILES / "hf_clip" / "tokenizer.json.gz").read_bytes()
    (tmp / "json" / "tokenizer.json").write_bytes(gzip.decompress(packed))
    shutil.copy(FILES / "hf_clip" / "tokenizer_config.json", tmp / "json")
    return {"vocab": tmp / "vocab", "json": tmp / "json"}


def build_tokenizer(name: str, folders: dict[str, Path]) -> T.Tokenizer:
    if name == "open_clip_simple":
        return T.SimpleTokenizer(77)
    if name == "open_clip_simple_canonicalize":
        return T.SimpleTokenizer(77, clean="canonicalize")
    if name == "hf_clip_vocab_merges":
        return T.tokenizer_from_files(folders["vocab"], "clip")
    if name == "hf_clip_tokenizer_json":
        return T.tokenizer_from_files(folders["json"], "clip")
    if name == "hf_siglip_spiece":
        return T.tokenizer_from_files(FILES / "hf_siglip", "siglip")
    if name == "hf_siglip2_tokenizer_json":
        return T.tokenizer_from_files(FILES / "hf_siglip2", "siglip2")
    folder = FILES / {"open_clip_hf_siglip": "open_clip_siglip", "open_clip_hf_siglip2": "open_clip_siglip2"}[name]
    return T.open_clip_tokenizer(json.loads((folder / "open_clip_config.json").read_text()), folder)


def sha256_int32(t: torch.Tensor) -> str:
    return hashlib.sha256(np.ascontiguousarray(t.numpy().astype(np.int32)).tobytes()).hexdigest()


def test_the_shipped_zero_shot_data_is_open_clips():
    assert len(SHIPPED["classnames"]) == 1000 and len(SHIPPED["openai_templates"]) == 80
    assert len(SHIPPED["simple_templates"]) == 7 and "open_clip" in SHIPPED["source"]
    assert all(t.count("{}") == 1 for t in SHIPPED["openai_templates"] + SHIPPED["simple_templates"])


def test_the_derived_clip_vocabulary_files_are_the_ones_transformers_read(folders):
    expected = FX["tokenizers"]["hf_clip_vocab_merges"]["files_sha256"]
    for name, sha in expected.items():
        assert hashlib.sha256((folders["vocab"] / name).read_bytes()).hexdigest() == sha, name


@pytest.mark.parametrize("name", sorted(FX["tokenizers"]))
def test_token_ids_equal_the_home_librarys_on_the_whole_corpus(name, folders):
    ref = FX["tokenizers"][name]
    texts = corpus()
    tok = build_tokenizer(name, folders)
    assert tok.context_length == ref["context_length"] and tok.pad_id == ref["pad_id"]
    batch = tok.batch(texts)
    assert list(batch.ids.shape) == ref["shape"]
    if sha256_int32(batch.ids) != ref["ids_sha256"]:
        width = ref["shape"][1]
        bad = [(int(i), row) for i, row in ref["rows"].items()
               if batch.ids[int(i)].tolist() != row + [ref["pad_id"]] * (width - len(row))]  # fmt: skip
        shown = "\n".join(f"  {texts[i]!r}: expected {row}, got {batch.ids[i].tolist()}" for i, row in bad[:5])
        pytest.fail(f"{name}: the ids differ ({len(bad)} of the {len(ref['rows'])} stored rows):\n{shown}")
    if "attention_mask_sha256" in ref:
        assert sha256_int32(batch.attention_mask) == ref["attention_mask_sha256"], name


def test_a_text_call_without_the_extra_says_which_pip_install():
    code = (
        "import sys\nsys.modules['tokenizers'] = None\nsys.modules['tokenizers.models'] = None\n"
        "from tinyvit.core.errors import TinyViTError\nfrom tinyvit.text.tokenize import SimpleTokenizer\n"
        "try:\n    SimpleTokenizer()\nexcept TinyViTError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert 'pip install "tinyvit[text]"' in out.stdout and "tokenizers" in out.stdout, out.stdout


def test_a_folder_gets_the_tokenizer_its_library_picks(tmp_path, folders):
    for sub, kind in (("open_clip_siglip", T.HFTokenizer), ("open_clip_siglip2", T.HFTokenizer),
                      ("hf_siglip2", T.HFTokenizer)):  # fmt: skip
        tok = T.tokenizer_for_folder(FILES / sub)
        assert isinstance(tok, kind) and tok.uses_attention_mask == (sub == "hf_siglip2"), sub
    for src, model_type, kind in ((FILES / "hf_siglip", "siglip", T.SentencePieceTokenizer),
                                  (folders["json"], "clip", T.HFTokenizer)):  # fmt: skip
        folder = tmp_path / model_type
        shutil.copytree(src, folder)
        (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
        assert isinstance(T.tokenizer_for_folder(folder), kind), model_type
    (tmp_path / "vit").mkdir()
    (tmp_path / "vit" / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(TinyViTError, match="'vit' has no text tower"):
        T.tokenizer_for_folder(tmp_path / "vit")


def test_tokenizer_errors_name_the_input(tmp_path):
    with pytest.raises(TinyViTError, match="text 1: expected a str"):
        T.SimpleTokenizer()(["fine", 3])
    with pytest.raises(TinyViTError, match="no CLIP tokenizer files"):
        T.tokenizer_from_files(tmp_path, "clip")
    with pytest.raises(TinyViTError, match="tokenizer.json is not in"):
        T.open_clip_tokenizer({"text_cfg": {"hf_tokenizer_name": "timm/ViT-B-16-SigLIP"}}, tmp_path)


# ---------------------------------------------------------------------------------------------
# text towers


def case_tower(name: str) -> tuple[TextTransformer, dict[str, float]]:
    """The case's checkpoint (refdata weights under its own key names) through text_layouts and the
    config reader of its library, as tinyvit will load it."""
    case = FX["cases"][name]
    tensors = {k: torch.from_numpy(np.asarray(fill(k, shape))) for k, (shape, _) in case["keys"].items()}
    layout = L.detect_text_layout(tensors)
    assert layout == case["layout"]
    state, logits = L.text_state(tensors, layout, what=name)
    if case["library"] == "open_clip":
        config = L.text_config_from_open_clip(json.loads(case["files"]["open_clip_config.json"]))
    else:
        config = L.text_config_from_hf(json.loads(case["files"]["config.json"]))
    return TextTransformer.from_state_dict(config, state, what=name), logits


@pytest.fixture(scope="module")
def towers() -> dict[str, tuple[TextTransformer, dict[str, float]]]:
    return {name: case_tower(name) for name in FX["cases"]}


OUTPUTS = [(c, o) for c, case in FX["cases"].items() for o in case["outputs"]]


@pytest.mark.parametrize("name,output", OUTPUTS, ids=[f"{c}/{o}" for c, o in OUTPUTS])
def test_text_embeddings_equal_the_home_librarys(name, output, towers):
    case = FX["cases"][name]
    spec = case["outputs"][output]
    tokens = case["token_sets"][spec["tokens"]]
    ids = torch.tensor(tokens["ids"])
    mask = torch.tensor(tokens["attention_mask"]) if "attention_mask" in tokens and "no_mask" not in output else None
    model, _ = towers[name]
    with torch.no_grad():
        got = model(ids, mask)
    expected = REF[f"{name}/{output}"]
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) <= TOL, f"{name}/{output}: max |Δ| {(got - expected).abs().max():.3g}"


@pytest.mark.parametrize("name", sorted(FX["cases"]))
def test_the_fixture_tokens_are_what_tinyvits_tokenizer_gives(name, folders):
    case = FX["cases"][name]
    tok = build_tokenizer(case["tokenizer"], folders)
    for set_name, tokens in case["token_sets"].items():
        if set_name == "pipeline" and name.startswith("hf_clip"):
            continue  # padded to the longest text, not to 77: the same ids, cut short (checked above)
        batch = tok.batch(tokens["texts"])
        assert batch.ids.tolist() == tokens["ids"], (name, set_name)
        if "attention_mask" in tokens:
            assert tok.uses_attention_mask and batch.attention_mask.tolist() == tokens["attention_mask"]


def test_logit_scale_and_bias_are_kept_as_plain_values(towers):
    for name, case in FX["cases"].items():
        _, logits = towers[name]
        assert logits["logit_scale"] == pytest.approx(case["logit_scale"], abs=1e-7)
        assert logits.get("logit_bias") == (None if case["logit_bias"] is None else pytest.approx(case["logit_bias"]))


def test_the_config_readers_match_what_the_libraries_built(towers):
    for name, case in FX["cases"].items():
        config = towers[name][0].config
        if case["library"] == "transformers":
            assert config.act_layer == ACTS[case["facts"]["act"]], name
            legacy = case["facts"]["eos_token_id"] == 2
            assert (config.pool, config.eos_id) == (("argmax", None) if legacy else ("eos", 49407)) or not config.causal
        else:
            act = "gelu_tanh" if case["facts"]["approximate"] == "tanh" else ACTS[case["facts"]["act"]]
            assert config.act_layer == act, name
            assert config.causal == case["facts"]["causal"] and config.pool == case["facts"]["pool_type"], name
    defaults = FX["hf_text_config_defaults"]
    for family in ("clip", "siglip", "siglip2"):
        ours = dict(L.HF_TEXT_DEFAULTS[family])
        if family != "clip":  # None: the width, as transformers' __init__ sets it
            ours["projection_size"] = ours["projection_size"] or ours["hidden_size"]
        assert ours == defaults[family], family
    assert L.HF_TEXT_DEFAULTS["clip"]["projection_dim"] == defaults["clip_model_projection_dim"]


def test_transformers_tokenizers_ask_for_the_padding_mask_as_its_pipeline_passes_it(folders):
    assert FX["pipeline_facts"]["siglip_pipeline_uses_attention_mask"] is True
    for name in ("hf_siglip_spiece", "hf_siglip2_tokenizer_json", "hf_clip_tokenizer_json"):
        assert build_tokenizer(name, folders).uses_attention_mask, name
    for name in ("open_clip_simple", "open_clip_hf_siglip", "open_clip_hf_siglip2"):
        assert not build_tokenizer(name, folders).uses_attention_mask, name  # open_clip never passes one


def test_siglips_padding_mask_changes_its_embedding_so_the_fixture_can_tell():
    with_mask = REF["hf_siglip/get_text_features@pipeline"]
    without = REF["hf_siglip/get_text_features@pipeline_no_mask"]
    assert float((with_mask - without).abs().max()) > 100 * TOL


def test_a_checkpoint_that_does_not_fit_the_config_is_refused(towers):
    model, _ = towers["hf_clip"]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state.pop("norm.weight")
    with pytest.raises(WeightsError, match="missing keys: norm.weight"):
        TextTransformer.from_state_dict(model.config, state, what="clip")
    with pytest.raises(WeightsError, match="no place in the text tower"):
        L.text_state({"text_model.embeddings.mystery": torch.zeros(1)}, "hf", what="ckpt")
    with pytest.raises(WeightsError, match="no text_cfg"):
        L.text_config_from_open_clip({"model_cfg": {"embed_dim": 8, "vision_cfg": {}}})
    assert L.detect_text_layout(["visual.conv1.weight", "logit_scale"]) is None


def test_text_config_round_trips_and_checks_its_fields():
    config = TextConfig(embed_dim=64, num_heads=4, causal=False, pool="last", projection_bias=True)
    assert TextConfig.from_dict(config.to_dict()) == config
    assert config.mlp_dim == 256 and config.output_dim == 512
    with pytest.raises(ValueError, match="pool"):
        TextConfig(pool="mean")
    with pytest.raises(ValueError, match="eos_id"):
        TextConfig(pool="eos")
