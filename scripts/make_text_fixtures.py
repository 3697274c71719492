"""Generate tests/fixtures/text.{json,safetensors}, tests/fixtures/text/ and src/tinyvit/text/imagenet_zeroshot.json
(issue #30: CLIP and SigLIP text towers and tokenizers).

Reference fixtures for the text side of CLIP and SigLIP, computed by the home libraries themselves
(open_clip and transformers), never by tinyvit and never typed in:

(a) tokenizers, on a corpus of open_clip's 1,000 ImageNet class names × its 80 OpenAI templates (80,000
    strings) plus hand-picked hard strings (accents, emoji, HTML entities, CJK, a 400-character string,
    the empty string, whitespace, punctuation runs, special-token look-alikes): open_clip's
    ``SimpleTokenizer``; transformers' ``CLIPTokenizer`` from ``vocab.json`` + ``merges.txt`` derived
    from the same BPE and from the ``tokenizer.json`` it saves; open_clip's ``HFTokenizer`` (a
    ``T5Tokenizer`` ``tokenizer.json``, ``clean="canonicalize"``, 64 tokens, as its SigLIP configs) and
    transformers' ``SiglipTokenizer`` on a sentencepiece model trained here on a small corpus (2,000
    pieces, so ``spiece.model`` is small). Stored: SHA-256 of each int32 id matrix (and attention mask)
    and a few hundred rows verbatim;
(b) small random text towers (width 64, depth 2, 4 heads): open_clip CLIP (QuickGELU, GELU),
    open_clip SigLIP (``CustomTextCLIP``: no causal mask, last-token pooling, projection with bias),
    transformers ``CLIPModel`` (and one with the legacy ``eos_token_id`` 2) and ``SiglipModel``: key
    tables, configs (the side files verbatim), token ids and the outputs of ``encode_text`` /
    ``get_text_features`` (with the zero-shot pipeline's padding and attention mask);
(c) the data tinyvit ships for ``--classes imagenet --templates openai``: open_clip's
    ``IMAGENET_CLASSNAMES``, ``OPENAI_IMAGENET_TEMPLATES``, ``SIMPLE_IMAGENET_TEMPLATES``.

Weights are ``tests/refdata.py`` ``fill(name, shape)`` under each checkpoint's own on-disk names,
written with the library's own save call and read back through its own loading path.

Set up the reference environment once (see scripts/make_family_fixtures.py), plus what
``SiglipTokenizer`` needs:

    .refs/bin/pip install sentencepiece protobuf ftfy regex
    .refs/bin/python scripts/make_text_fixtures.py

Nothing is downloaded. The outputs are deterministic (one torch thread, one sentencepiece thread).
See tests/fixtures/TEXT.md for the format.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_family_fixtures import buffers_of, filled_state, key_table, safetensors_keys  # noqa: E402

OUT = ROOT / "tests" / "fixtures"
FILES = OUT / "text"  # tokenizer files the tests read
SHIPPED = ROOT / "src" / "tinyvit" / "text" / "imagenet_zeroshot.json"

torch.set_grad_enabled(False)
torch.set_num_threads(1)

ROWS_KEPT = 300  # id rows stored verbatim per tokenizer: the hard strings, then every n-th corpus string
SMALL_TEXT = dict(width=64, heads=4, layers=2)
PROMPTS = [
    "a photo of a cat.",
    "This is a photo of a golden retriever.",
    "a bad photo of the hard to see tench, Tinca tinca.",
    "",
    "Crème brûlée &amp; café 🍮 in 東京",
    " ".join(["a very long caption"] * 40),  # truncated: the end token kept
]


# ---------------------------------------------------------------------------------------------
# the corpus


def hard_strings() -> list[str]:
    long = ("A photograph of " + "a very, very long caption that goes on " * 20)[:400]
    return [
        "", " ", "   \t\n  ", "\u00a0", "a", "A", "I", "x" * 90,
        long, long.upper(), "word " * 100,
        "Crème brûlée", "naïve café", "Ångström", "Æsir", "straße", "İstanbul", "ΣΊΣΥΦΟΣ", "Ǆemal",
        "cafe\u0301 (decomposed)", "ﬁne ligature", "１２３ full-width", "Ⅻ roman", "²³ superscripts",
        "🍮🐱‍👤👍🏽", "a photo of a 🐈", "🇯🇵 flag", "emoji🙂inside🙂words",
        "東京タワーの写真", "北京烤鸭", "한국어 문장", "ภาษาไทย", "русский текст", "עברית", "العربية", "हिन्दी",
        "&amp;", "&amp;amp;", "&lt;b&gt;bold&lt;/b&gt;", "Tom &amp; Jerry", "&quot;quoted&quot;", "&#39;apos&#39;",
        "&eacute;t&eacute;", "&nbsp;space", "&notanentity;", "AT&T", "<b>raw html</b>",
        "!!!", "?!?!", "...", "…", "—", "a---b", "((()))", "[x]", "{}", "@#$%^&*", "__init__", "snake_case_words",
        "e.g. i.e.", "it's", "they're", "we've", "I'm", "you'll", "he'd", "IT'S", "don't", "rock'n'roll",
        "''quotes''", "\"double\"", "`backtick`", "a/b\\c", "1234567890", "3.14159", "$100", "100%", "#1",
        "mixedCASE Words", "ALL CAPS", "Title Case Here", "tab\tseparated", "new\nline", "carriage\rreturn",
        "  leading and trailing  ", "multiple    spaces", "zero\u200bwidth", "soft\u00adhyphen", "ümlaut ÜMLAUT",
        "<start_of_text>", "<end_of_text>", "<|startoftext|>", "<|endoftext|>", "<|ENDOFTEXT|>",
        "a<|endoftext|>b", "x <end_of_text> y", "</s>", "a </s> b", "<unk>", "<pad>", "▁", "▁a ▁b",
        "mojibake: cafÃ©", "â€œsmart quotesâ€\x9d", "\x00nul", "\ufeffbom", "\U0001d400 math bold",
    ]  # fmt: skip


def corpus() -> tuple[list[str], int]:
    """The hard strings, then the 80,000 ImageNet prompts; and how many hard strings lead."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    hard = hard_strings()
    prompts = [t(c) for c in IMAGENET_CLASSNAMES for t in OPENAI_IMAGENET_TEMPLATES]
    assert len(prompts) == 80_000
    return hard + prompts, len(hard)


def kept_rows(n: int, n_hard: int) -> list[int]:
    step = max(1, (n - n_hard) // (ROWS_KEPT - n_hard))
    return list(range(n_hard)) + list(range(n_hard, n, step))[: ROWS_KEPT - n_hard]


def sha256_int32(a) -> str:
    return hashlib.sha256(np.ascontiguousarray(np.asarray(a, dtype=np.int32)).tobytes()).hexdigest()


def id_record(ids: torch.Tensor, mask: torch.Tensor | None, rows: list[int], call: str) -> dict:
    rec = {
        "call": call,
        "shape": list(ids.shape),
        "ids_sha256": sha256_int32(ids),
        "rows": {str(i): ids[i].tolist() for i in rows},
    }
    if mask is not None:
        rec["attention_mask_sha256"] = sha256_int32(mask)
    return rec


def trimmed(row: list[int], pad_id: int) -> list[int]:
    """A right-padded row without its trailing padding (the tests pad it again)."""
    n = len(row)
    while n and row[n - 1] == pad_id:
        n -= 1
    return row[:n]


def write_gz(path: Path, data: bytes) -> None:
    """gzip with no name and mtime 0: the same bytes on every run."""
    with open(path, "wb") as f, gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0) as g:
        g.write(data)


# ---------------------------------------------------------------------------------------------
# (a) tokenizers


def train_spiece(path: Path) -> None:
    """A small unigram sentencepiece model, T5's special ids (pad 0, eos 1, unk 2, no bos), trained on
    ImageNet prompts and a few non-Latin lines (so CJK, Cyrillic and accents get pieces)."""
    import io

    import sentencepiece as spm
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    lines = [t(c) for c in IMAGENET_CLASSNAMES for t in OPENAI_IMAGENET_TEMPLATES[::8]]
    lines += ["東京タワーの写真 北京烤鸭 한국어 문장 русский текст Crème brûlée naïve café"] * 3
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=2000, model_type="unigram", pad_id=0,
        eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, num_threads=1, minloglevel=2, hard_vocab_limit=False,
    )  # fmt: skip
    path.write_bytes(model.getvalue())


def train_gemma_like(path: Path) -> None:
    """A small BPE sentencepiece model shaped like Gemma's (SigLIP 2's tokenizer): <pad> 0, <eos> 1,
    <bos> 2, <unk> 3, <mask>, byte fallback, digits split, no dummy prefix, no normalization."""
    import io

    import sentencepiece as spm
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    lines = [t(c) for c in IMAGENET_CLASSNAMES for t in OPENAI_IMAGENET_TEMPLATES[::8]]
    lines += ["東京タワーの写真 北京烤鸭 한국어 문장 русский текст Crème brûlée naïve café"] * 3
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=1500, model_type="bpe", pad_id=0, eos_id=1,
        bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        user_defined_symbols=["<mask>"], byte_fallback=True, split_digits=True, add_dummy_prefix=False,
        remove_extra_whitespaces=False, normalization_rule_name="identity", allow_whitespace_only_pieces=True,
        character_coverage=1.0, num_threads=1, minloglevel=2, hard_vocab_limit=False,
    )  # fmt: skip
    path.write_bytes(model.getvalue())


def clip_vocab_files(folder: Path) -> dict[str, str]:
    """vocab.json + merges.txt as OpenAI's transformers repos have them, from open_clip's BPE file:
    open_clip's vocabulary with <start_of_text>/<end_of_text> named <|startoftext|>/<|endoftext|>."""
    from open_clip.tokenizer import SimpleTokenizer, default_bpe

    oc = SimpleTokenizer()
    rename = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {rename.get(k, k): v for k, v in oc.encoder.items()}
    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return {f: hashlib.sha256((folder / f).read_bytes()).hexdigest() for f in ("vocab.json", "merges.txt")}


def spm_vocab_size(path: Path) -> int:
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(path)).get_piece_size()


def tokenizer_cases(texts: list[str], rows: list[int], tmp: Path) -> dict[str, dict]:
    import open_clip
    from transformers import AutoTokenizer, CLIPTokenizer, SiglipTokenizer, T5Tokenizer

    cases = {}

    def run(name: str, tok, call: str, pad_id: int, **record) -> None:
        out = tok(texts) if callable(tok) else tok
        ids, mask = (out, None) if isinstance(out, torch.Tensor) else (out["input_ids"], out["attention_mask"])
        rec = id_record(ids, mask, rows, call)
        rec["rows"] = {i: trimmed(r, pad_id) for i, r in rec["rows"].items()}
        cases[name] = {**record, "pad_id": pad_id, **rec}
        print(f"  {name}: {tuple(ids.shape)}", flush=True)

    # open_clip's SimpleTokenizer (its default for configs without hf_tokenizer_name)
    oc = open_clip.get_tokenizer("ViT-B-32")
    assert type(oc).__name__ == "SimpleTokenizer"
    run("open_clip_simple", oc, "open_clip.get_tokenizer('ViT-B-32')(texts)", 0, context_length=77)
    oc_c = open_clip.tokenizer.SimpleTokenizer(clean="canonicalize")
    run("open_clip_simple_canonicalize", oc_c, "open_clip.tokenizer.SimpleTokenizer(clean='canonicalize')(texts)", 0,
        context_length=77)  # fmt: skip

    # transformers' CLIPTokenizer: from vocab.json + merges.txt, then from the tokenizer.json it saves
    src = tmp / "clip_vocab"
    src.mkdir()
    sha = clip_vocab_files(src)
    clip = CLIPTokenizer.from_pretrained(str(src))
    kw = dict(padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    call = "tok(texts, padding='max_length', max_length=77, truncation=True)"
    run("hf_clip_vocab_merges", clip(texts, **kw), f"CLIPTokenizer.from_pretrained(vocab.json + merges.txt); {call}",
        clip.pad_token_id, files_sha256=sha, context_length=77)  # fmt: skip
    saved = FILES / "hf_clip"
    clip.save_pretrained(str(tmp / "clip_saved"))
    write_gz(saved / "tokenizer.json.gz", (tmp / "clip_saved" / "tokenizer.json").read_bytes())
    shutil.copy(tmp / "clip_saved" / "tokenizer_config.json", saved / "tokenizer_config.json")
    again = AutoTokenizer.from_pretrained(str(tmp / "clip_saved"))
    assert type(again).__name__ == "CLIPTokenizer", type(again)
    run("hf_clip_tokenizer_json", again(texts, **kw), f"AutoTokenizer.from_pretrained(saved folder); {call}",
        again.pad_token_id, files=sorted(os.listdir(tmp / "clip_saved")), context_length=77)  # fmt: skip

    # a sentencepiece model: transformers' SiglipTokenizer on spiece.model; T5Tokenizer's tokenizer.json
    # through open_clip's HFTokenizer with clean="canonicalize" and 64 tokens (open_clip's SigLIP configs)
    spm_src = tmp / "spm"
    spm_src.mkdir()
    train_spiece(spm_src / "spiece.model")
    sig = SiglipTokenizer(str(spm_src / "spiece.model"))
    sig.save_pretrained(str(FILES / "hf_siglip"))
    sig = AutoTokenizer.from_pretrained(str(FILES / "hf_siglip"))
    assert type(sig).__name__ == "SiglipTokenizer", type(sig)
    kw64 = dict(padding="max_length", max_length=64, truncation=True, return_tensors="pt")
    run("hf_siglip_spiece", sig(texts, **kw64), "AutoTokenizer.from_pretrained(SiglipTokenizer folder)(texts, "
        "padding='max_length', max_length=64, truncation=True)  # the zero-shot pipeline's", sig.pad_token_id,
        files=sorted(os.listdir(FILES / "hf_siglip")), context_length=64)  # fmt: skip
    t5 = T5Tokenizer.from_pretrained(str(spm_src), extra_ids=0, legacy=False)
    t5.save_pretrained(str(FILES / "open_clip_siglip"))
    vocab = spm_vocab_size(spm_src / "spiece.model")
    (FILES / "open_clip_siglip" / "open_clip_config.json").write_text(json.dumps(oc_siglip_config(vocab), indent=2))
    hf = open_clip.get_tokenizer(f"local-dir:{FILES / 'open_clip_siglip'}")
    assert type(hf).__name__ == "HFTokenizer" and hf.clean_fn.__name__ == "_clean_canonicalize", hf
    run("open_clip_hf_siglip", hf, "open_clip.get_tokenizer('local-dir:' + folder)(texts)  # HFTokenizer, "
        "canonicalize, 64", hf.tokenizer.pad_token_id, files=sorted(os.listdir(FILES / "open_clip_siglip")),
        context_length=64)  # fmt: skip
    gemma_cases(run, texts, tmp)
    return cases


def gemma_cases(run, texts: list[str], tmp: Path) -> None:
    """SigLIP 2: a Gemma-style tokenizer.json (GemmaTokenizer, no bos, eos appended, padded right) read by
    transformers as Siglip2Tokenizer (a folder whose config.json says siglip2: lowercase added) and by
    open_clip's HFTokenizer (canonicalize, 64)."""
    import open_clip
    from transformers import AutoTokenizer, GemmaTokenizer, Siglip2Config

    (tmp / "gemma").mkdir()
    train_gemma_like(tmp / "gemma" / "tokenizer.model")
    gemma = GemmaTokenizer.from_pretrained(str(tmp / "gemma"), add_bos_token=False, add_eos_token=True,
                                           padding_side="right")  # fmt: skip
    for sub in ("hf_siglip2", "open_clip_siglip2"):
        gemma.save_pretrained(str(FILES / sub))
        config = json.loads((FILES / sub / "tokenizer_config.json").read_text())
        config.pop("vocab_file", None)  # the temporary folder it was made from
        (FILES / sub / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    Siglip2Config(text_config=dict(HF_TEXT, vocab_size=len(gemma), max_position_embeddings=64),
                  vision_config=HF_VISION).save_pretrained(str(FILES / "hf_siglip2"))  # fmt: skip
    sig2 = AutoTokenizer.from_pretrained(str(FILES / "hf_siglip2"))
    assert type(sig2).__name__ == "Siglip2Tokenizer" and sig2.padding_side == "right", (type(sig2), sig2.padding_side)
    kw64 = dict(padding="max_length", max_length=64, truncation=True, return_tensors="pt")
    run("hf_siglip2_tokenizer_json", sig2(texts, **kw64), "AutoTokenizer.from_pretrained(folder with a siglip2 "
        "config.json)(texts, padding='max_length', max_length=64, truncation=True)", sig2.pad_token_id,
        files=sorted(os.listdir(FILES / "hf_siglip2")), context_length=64)  # fmt: skip
    (FILES / "open_clip_siglip2" / "open_clip_config.json").write_text(
        json.dumps(oc_siglip_config(len(gemma), tanh=True, name="timm/ViT-B-16-SigLIP2"), indent=2))
    hf = open_clip.get_tokenizer(f"local-dir:{FILES / 'open_clip_siglip2'}")
    assert type(hf).__name__ == "HFTokenizer" and type(hf.tokenizer).__name__ == "GemmaTokenizer", hf.tokenizer
    run("open_clip_hf_siglip2", hf, "open_clip.get_tokenizer('local-dir:' + folder)(texts)  # HFTokenizer "
        "(GemmaTokenizer), canonicalize, 64", hf.tokenizer.pad_token_id,
        files=sorted(os.listdir(FILES / "open_clip_siglip2")), context_length=64)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# (b) text towers

HF_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                 patch_size=16)  # fmt: skip
HF_TEXT = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4)
OC_VISION = dict(image_size=32, layers=1, width=32, patch_size=16, head_width=16)  # tiny: the text tower matters


def oc_siglip_config(vocab_size: int, tanh: bool = False, name: str = "timm/ViT-B-16-SigLIP") -> dict:
    """An open_clip SigLIP config as its ViT-B-16-SigLIP(2).json, small; the tokenizer is the
    tokenizer.json in the folder (open_clip reads it there for 'local-dir:')."""
    text = dict(context_length=64, vocab_size=vocab_size, hf_tokenizer_name=name,
                tokenizer_kwargs={"clean": "canonicalize"}, **SMALL_TEXT, no_causal_mask=True, proj_bias=True,
                pool_type="last", norm_kwargs={"eps": 1e-6})  # fmt: skip
    if tanh:
        text["act_kwargs"] = {"approximate": "tanh"}
    return {"model_cfg": dict(embed_dim=32, init_logit_bias=-10, custom_text=True, vision_cfg=dict(OC_VISION),
                              text_cfg=text),
            "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}  # fmt: skip


def oc_clip_config(quick_gelu: bool) -> dict:
    text = dict(context_length=77, vocab_size=49408, **SMALL_TEXT)
    cfg = dict(embed_dim=32, vision_cfg=dict(OC_VISION), text_cfg=text)
    if quick_gelu:
        cfg["quick_gelu"] = True
    return {"model_cfg": cfg, "preprocess_cfg": {}}


class _NoTokenizer:
    def save_pretrained(self, directory) -> None:
        pass


class Fixture:
    def __init__(self):
        self.cases: dict[str, dict] = {}
        self.tensors: dict[str, torch.Tensor] = {}

    def add(self, name: str, case: dict, outputs: dict[str, tuple[str, str, torch.Tensor]]) -> None:
        """outputs: name -> (the token set it ran on, the library call, tensor)."""
        case["outputs"] = {}
        for k, (tokens, call, v) in outputs.items():
            v = v.detach().float().contiguous().clone()
            assert torch.isfinite(v).all() and not torch.equal(v[0], v[1]), (name, k)
            case["outputs"][k] = {"tokens": tokens, "shape": list(v.shape), "call": call}
            self.tensors[f"{name}/{k}"] = v
        self.cases[name] = case
        print(f"  {name}: {', '.join(f'{k} {tuple(v[2].shape)}' for k, v in outputs.items())}", flush=True)


def token_set(tok_out, texts: list[str]) -> dict:
    if isinstance(tok_out, torch.Tensor):
        return {"texts": texts, "ids": tok_out.tolist()}
    return {"texts": texts, "ids": tok_out["input_ids"].tolist(), "attention_mask": tok_out["attention_mask"].tolist()}


def open_clip_model_cases(fx: Fixture, tmp: Path) -> None:
    import open_clip
    from open_clip.push_to_hf_hub import save_for_hf

    cases = {
        "oc_clip_quickgelu": (oc_clip_config(True), "open_clip", None),
        "oc_clip": (oc_clip_config(False), "open_clip", None),
        "oc_siglip": (json.loads((FILES / "open_clip_siglip" / "open_clip_config.json").read_text()),
                      "open_clip_custom", "open_clip_hf_siglip"),
        "oc_siglip2": (json.loads((FILES / "open_clip_siglip2" / "open_clip_config.json").read_text()),
                       "open_clip_custom", "open_clip_hf_siglip2"),
    }
    for name, (config, layout, tok_case) in cases.items():
        boot = tmp / f"{name}_boot"
        boot.mkdir()
        (boot / "open_clip_config.json").write_text(json.dumps(config))
        model = open_clip.create_model(f"local-dir:{boot}").eval()  # random init, no weights there
        state = model.state_dict()
        keys = key_table(state)
        model.load_state_dict(filled_state(keys, state), strict=True)
        folder = tmp / name
        save_for_hf(model, _NoTokenizer(), config["model_cfg"], str(folder), safe_serialization=True)
        disk_keys, _ = safetensors_keys(folder / "open_clip_model.safetensors")
        assert disk_keys == keys, name
        loaded = open_clip.create_model(f"local-dir:{folder}").eval()
        folder_of = {"open_clip_hf_siglip": "open_clip_siglip", "open_clip_hf_siglip2": "open_clip_siglip2"}
        spec = f"local-dir:{FILES / folder_of[tok_case]}" if tok_case else "ViT-B-32"
        tok = open_clip.get_tokenizer(spec)
        ids = tok(PROMPTS)
        text = loaded.text if layout == "open_clip_custom" else loaded
        case = {
            "library": "open_clip", "layout": layout,
            "files": {"open_clip_config.json": (folder / "open_clip_config.json").read_text()},
            "keys": keys, "buffers": buffers_of(text if layout == "open_clip_custom" else loaded),
            "tokenizer": tok_case or "open_clip_simple",
            "token_sets": {"open_clip": token_set(ids, PROMPTS)},
            "logit_scale": float(loaded.logit_scale), "logit_bias": None if loaded.logit_bias is None
            else float(loaded.logit_bias),
            "loaded_with": "open_clip.create_model('local-dir:' + folder) after save_for_hf(..., "
            "safe_serialization=True)",
            "facts": {"pool_type": getattr(text, "text_pool_type", getattr(text, "pool_type", None)),
                      "act": type(text.transformer.resblocks[0].mlp.gelu).__name__,
                      "approximate": getattr(text.transformer.resblocks[0].mlp.gelu, "approximate", None),
                      "causal": getattr(text, "attn_mask", None) is not None},
        }  # fmt: skip
        fx.add(name, case, {"encode_text": ("open_clip", "model.encode_text(ids, normalize=False)",
                                            loaded.encode_text(ids, normalize=False))})  # fmt: skip


def hf_tokens(name: str) -> tuple[str, dict]:
    """The tokenizer case and the token sets of a transformers case, as its processor and the zero-shot
    pipeline make them."""
    from transformers import AutoTokenizer

    if name.startswith("hf_siglip"):
        case = "hf_siglip2_tokenizer_json" if name == "hf_siglip2" else "hf_siglip_spiece"
        tok = AutoTokenizer.from_pretrained(str(FILES / ("hf_siglip2" if name == "hf_siglip2" else "hf_siglip")))
        return case, {"pipeline": tok(PROMPTS, padding="max_length", max_length=64, truncation=True,
                                      return_tensors="pt")}  # fmt: skip
    with tempfile.TemporaryDirectory() as d:
        packed = (FILES / "hf_clip" / "tokenizer.json.gz").read_bytes()
        (Path(d) / "tokenizer.json").write_bytes(gzip.decompress(packed))
        shutil.copy(FILES / "hf_clip" / "tokenizer_config.json", Path(d) / "tokenizer_config.json")
        tok = AutoTokenizer.from_pretrained(d)
    kw = dict(padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    pipeline = tok(PROMPTS[:5], padding=True, return_tensors="pt")  # the pipeline's padding; no long text
    return "hf_clip_tokenizer_json", {"max_length": tok(PROMPTS, **kw), "pipeline": pipeline}


def hf_model_cases(fx: Fixture, tmp: Path, vocab_size: int) -> None:
    from transformers import CLIPConfig, CLIPModel, Siglip2Config, Siglip2Model, SiglipConfig, SiglipModel

    text, vision = HF_TEXT, HF_VISION
    cases = {
        "hf_clip": (CLIPModel, CLIPConfig(text_config=dict(**text, vocab_size=49408, max_position_embeddings=77),
                                          vision_config=vision, projection_dim=32)),
        "hf_clip_legacy_eos": (CLIPModel, CLIPConfig(text_config=dict(**text, vocab_size=49408, hidden_act="gelu",
                               max_position_embeddings=77, eos_token_id=2), vision_config=vision, projection_dim=32)),
        "hf_siglip": (SiglipModel, SiglipConfig(text_config=dict(**text, vocab_size=vocab_size,
                                                                 max_position_embeddings=64), vision_config=vision)),
        "hf_siglip2": (Siglip2Model, Siglip2Config.from_pretrained(str(FILES / "hf_siglip2"))),
    }  # fmt: skip
    for name, (cls, config) in cases.items():
        model = cls(config).eval()
        folder = tmp / name
        model.save_pretrained(str(folder))
        keys, meta = safetensors_keys(folder / "model.safetensors")
        save_file(filled_state(keys), str(folder / "model.safetensors"), metadata=meta)
        loaded = cls.from_pretrained(str(folder)).eval()
        siglip = name.startswith("hf_siglip")
        tok_case, sets = hf_tokens(name)
        outputs = {}
        for set_name, enc in sets.items():
            feats = loaded.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
            outputs[f"get_text_features@{set_name}"] = (set_name, "model.get_text_features(input_ids, attention_mask)"
                                                        ".pooler_output", feats.pooler_output)  # fmt: skip
        if siglip:
            enc = sets["pipeline"]
            outputs["get_text_features@pipeline_no_mask"] = (
                "pipeline", "model.get_text_features(input_ids).pooler_output  # no attention mask, as open_clip",
                loaded.get_text_features(input_ids=enc["input_ids"]).pooler_output,
            )
        case = {
            "library": "transformers", "layout": "hf", "class": cls.__name__,
            "files": {"config.json": (folder / "config.json").read_text()},
            "keys": keys, "buffers": buffers_of(loaded),
            "tokenizer": tok_case,
            "token_sets": {k: token_set(v, PROMPTS if k != "pipeline" or siglip else PROMPTS[:5])
                           for k, v in sets.items()},
            "logit_scale": float(loaded.logit_scale), "logit_bias": float(loaded.logit_bias) if siglip else None,
            "loaded_with": f"{cls.__name__}.from_pretrained(folder) after save_pretrained and the weights refilled",
            "facts": {"act": type(loaded.text_model.encoder.layers[0].mlp.activation_fn).__name__,
                      "eos_token_id": loaded.text_model.config.eos_token_id},
        }  # fmt: skip
        fx.add(name, case, outputs)


# ---------------------------------------------------------------------------------------------
# (c) shipped data, and main


def zero_shot_data() -> dict:
    import open_clip
    from open_clip import zero_shot_metadata as z

    def as_format(templates) -> list[str]:
        out = [t("{}") for t in templates]
        for t, s in zip(templates, out, strict=True):
            assert all(t(c) == s.format(c) for c in z.IMAGENET_CLASSNAMES), s
        return out

    return {
        "source": f"open_clip {open_clip.__version__} (open_clip_torch), open_clip/zero_shot_metadata.py: "
        "IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES; MIT License, "
        "Copyright (c) 2012-2021 Gabriel Ilharco, Mitchell Wortsman, Nicholas Carlini, Rohan Taori, Achal Dave, "
        "Vaishaal Shankar, John Miller, Hongseok Namkoong, Hannaneh Hajishirzi, Ali Farhadi, Ludwig Schmidt. "
        "Templates are str.format strings ('{}' is the class name).",
        "classnames": list(z.IMAGENET_CLASSNAMES),
        "openai_templates": as_format(z.OPENAI_IMAGENET_TEMPLATES),
        "simple_templates": as_format(z.SIMPLE_IMAGENET_TEMPLATES),
    }


def pipeline_mask_fact() -> dict:
    """Whether transformers' zero-shot-image-classification pipeline passes SigLIP's padding mask to the
    text tower: its scores against the sigmoid scores recomputed with and without the mask (a small
    SiglipModel with seeded normal weights, the hf_siglip tokenizer, one random 40x40 image)."""
    from PIL import Image
    from transformers import AutoTokenizer, SiglipConfig, SiglipImageProcessor, SiglipModel, pipeline

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(FILES / "hf_siglip"))
    config = SiglipConfig(text_config=dict(HF_TEXT, vocab_size=len(tok), max_position_embeddings=64),
                          vision_config=dict(HF_VISION, hidden_size=64, num_attention_heads=4))  # fmt: skip
    model = SiglipModel(config).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.3)
    processor = SiglipImageProcessor(size={"height": 32, "width": 32})
    image = Image.fromarray((np.random.RandomState(0).rand(40, 40, 3) * 255).astype("uint8"))
    labels = ["cat", "dog", "a red car"]
    pipe = pipeline("zero-shot-image-classification", model=model, tokenizer=tok, image_processor=processor)
    got = {o["label"]: o["score"] for o in pipe(image, candidate_labels=labels)}
    image_emb = model.get_image_features(pixel_values=processor(images=[image], return_tensors="pt")["pixel_values"])
    image_emb = torch.nn.functional.normalize(image_emb.pooler_output, dim=-1)
    enc = tok([f"This is a photo of {x}." for x in labels], padding="max_length", max_length=64, truncation=True,
              return_tensors="pt")  # fmt: skip
    scores = {}
    for how, mask in (("with_mask", enc["attention_mask"]), ("without_mask", None)):
        text = model.get_text_features(input_ids=enc["input_ids"], attention_mask=mask).pooler_output
        logits = image_emb @ torch.nn.functional.normalize(text, dim=-1).T * model.logit_scale.exp() + model.logit_bias
        scores[how] = torch.sigmoid(logits)[0].tolist()
    pipeline_scores = [got[x] for x in labels]
    uses = bool(np.allclose(pipeline_scores, scores["with_mask"], atol=1e-6))
    assert uses != bool(np.allclose(pipeline_scores, scores["without_mask"], atol=1e-6))
    return {"siglip_pipeline_uses_attention_mask": uses, "pipeline_scores": pipeline_scores, **scores,
            "how": pipeline_mask_fact.__doc__.split("\n")[0].strip()}  # fmt: skip


def hf_defaults() -> dict:
    from transformers import CLIPConfig, CLIPTextConfig, Siglip2TextConfig, SiglipTextConfig

    names = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "max_position_embeddings", "hidden_act", "layer_norm_eps"]  # fmt: skip
    out = {}
    for family, cls, extra in (("clip", CLIPTextConfig, ["eos_token_id", "projection_dim"]),
                               ("siglip", SiglipTextConfig, ["projection_size"]),
                               ("siglip2", Siglip2TextConfig, ["projection_size"])):  # fmt: skip
        d = cls().to_dict()
        out[family] = {k: d[k] for k in names + extra}
    out["clip_model_projection_dim"] = CLIPConfig().projection_dim
    return out


def main() -> None:
    import ftfy
    import open_clip
    import safetensors
    import sentencepiece
    import tokenizers
    import transformers

    versions = {
        "torch": torch.__version__, "transformers": transformers.__version__, "open_clip": open_clip.__version__,
        "tokenizers": tokenizers.__version__, "sentencepiece": sentencepiece.__version__, "ftfy": ftfy.__version__,
        "safetensors": safetensors.__version__, "numpy": np.__version__,
    }  # fmt: skip
    print("reference versions:", versions, flush=True)
    if FILES.exists():
        shutil.rmtree(FILES)
    for sub in ("hf_clip", "hf_siglip", "open_clip_siglip", "hf_siglip2", "open_clip_siglip2"):
        (FILES / sub).mkdir(parents=True)
    texts, n_hard = corpus()
    rows = kept_rows(len(texts), n_hard)
    fx = Fixture()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        print("tokenizers", flush=True)
        tokenizers_ = tokenizer_cases(texts, rows, tmp)
        vocab = spm_vocab_size(FILES / "hf_siglip" / "spiece.model")
        print("open_clip", flush=True)
        open_clip_model_cases(fx, tmp)
        print("transformers", flush=True)
        hf_model_cases(fx, tmp, vocab)
    fixture = {
        "generated_by": "scripts/make_text_fixtures.py",
        "versions": versions,
        "corpus": {"hard_strings": texts[:n_hard], "imagenet_prompts": len(texts) - n_hard,
                   "how": "hard_strings, then [t(c) for c in IMAGENET_CLASSNAMES for t in OPENAI_IMAGENET_TEMPLATES] "
                          "(open_clip.zero_shot_metadata; the same lists as src/tinyvit/text/imagenet_zeroshot.json)",
                   "rows_kept": rows},  # fmt: skip
        "tokenizers": tokenizers_,
        "prompts": PROMPTS,
        "cases": fx.cases,
        "hf_text_config_defaults": hf_defaults(),
        "pipeline_facts": pipeline_mask_fact(),
    }
    (OUT / "text.json").write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    save_file(fx.tensors, str(OUT / "text.safetensors"), metadata={"generated_by": "scripts/make_text_fixtures.py"})
    SHIPPED.write_text(json.dumps(zero_shot_data(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.chmod(OUT / "text.safetensors", 0o644)
    paths = [OUT / "text.json", OUT / "text.safetensors", SHIPPED, *sorted(p for p in FILES.rglob("*") if p.is_file())]
    for p in paths:
        sha = hashlib.sha256(p.read_bytes()).hexdigest()
        print(f"  {p.relative_to(ROOT)}: {p.stat().st_size / 1e3:.1f} kB  sha256 {sha}")


if __name__ == "__main__":
    main()
