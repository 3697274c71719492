"""Tokenizers for CLIP and SigLIP text towers, identical id for id to the weights' home library.

Three kinds, one interface (:class:`Tokenizer`: texts → ids (N, context_length) and the padding mask):

* :class:`SimpleTokenizer` — open_clip's ``SimpleTokenizer``, for open_clip configs without
  ``hf_tokenizer_name`` (OpenAI / LAION CLIP): ``ftfy.fix_text``, ``html.unescape`` twice, whitespace
  collapsed, lowercase, open_clip's regex split, byte-level BPE with ``</w>`` from the vocabulary
  shipped here; start 49406 / end 49407; 77 tokens; padded with 0; truncation keeps the end token last.
* :class:`HFTokenizer` — a ``tokenizers.Tokenizer`` (a repository's ``tokenizer.json``, or CLIP's
  ``vocab.json`` + ``merges.txt`` assembled as transformers' ``CLIPTokenizer`` does), padded to the
  context length with the repository's pad token and truncated as transformers does (special tokens
  kept). Used with open_clip's cleaning for open_clip's ``hf_tokenizer_name`` configs (SigLIP:
  ``clean="canonicalize"``, 64 tokens), and alone for transformers' CLIP (pad ``<|endoftext|>``).
* :class:`SentencePieceTokenizer` — transformers' ``SiglipTokenizer`` on a ``spiece.model`` (only where
  a SigLIP repository has no ``tokenizer.json``): lowercase, punctuation stripped, ``</s>`` appended,
  padded to 64 with ``</s>``.

Constructors: :func:`open_clip_tokenizer` (an ``open_clip_config.json``), :func:`tokenizer_from_files`
(a transformers folder, given its family) and :func:`tokenizer_for_folder` (either, by what the folder
holds). ``tokenizers``, ``ftfy``, ``regex`` and ``sentencepiece`` are imported when a tokenizer is built;
without them :class:`TinyViTError` says ``pip install "tinyvit[text]"``.

Padding and the models (what each home library does, which :attr:`Tokenizer.uses_attention_mask` says):
open_clip never passes a padding mask (padding is part of SigLIP's input: pooled at the last
position); transformers passes the tokenizer's ``attention_mask`` to the text model (CLIP and SigLIP
in transformers 5, whose ``SiglipTokenizer`` returns one); with CLIP's causal mask and pooling at the
end token it changes nothing.
"""

from __future__ import annotations

import gzip
import html
import importlib
import json
import string
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from tinyvit.core.errors import TinyViTError

__all__ = [
    "CLEANS",
    "HFTokenizer",
    "SentencePieceTokenizer",
    "SimpleTokenizer",
    "TokenBatch",
    "Tokenizer",
    "clean_text",
    "open_clip_tokenizer",
    "tokenizer_for_folder",
    "tokenizer_from_files",
]

BPE_VOCAB = Path(__file__).with_name("bpe_simple_vocab_16e6.txt.gz")  # OpenAI CLIP's, from open_clip (MIT)
CLEANS = ("lower", "whitespace", "canonicalize")  # open_clip's ``clean`` choices


def _require(module: str):
    """Import one of the text extra's modules, or say which pip install brings it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise TinyViTError(f'tokenizing text needs {module}, not installed here: pip install "tinyvit[text]"') from e


# ---------------------------------------------------------------------------------------------
# open_clip's text cleaning (open_clip/tokenizer.py: basic_clean, whitespace_clean, canonicalize_text)


def _basic_clean(text: str) -> str:
    text = _require("ftfy").fix_text(text)
    return html.unescape(html.unescape(text)).strip()


def _canonicalize(text: str) -> str:
    """big_vision's: underscores to spaces, punctuation removed, lowercase, whitespace collapsed."""
    text = text.replace("_", " ").translate(str.maketrans("", "", string.punctuation)).lower()
    return " ".join(text.split()).strip()


def clean_text(text: str, clean: str) -> str:
    """open_clip's cleaning ``clean`` (one of CLEANS) of one text."""
    if clean == "canonicalize":
        return _canonicalize(_basic_clean(text))
    text = " ".join(_basic_clean(text).split()).strip()
    return text.lower() if clean == "lower" else text


# ---------------------------------------------------------------------------------------------
# the interface


class TokenBatch(NamedTuple):
    ids: torch.Tensor  # (N, L) int64
    attention_mask: torch.Tensor  # (N, L) int64: 1 for a token of the text (specials included), 0 for padding


class Tokenizer:
    """Texts → token ids (N, context_length): :meth:`encode` per text (special tokens added, truncated),
    then padding with ``pad_id`` on ``padding_side``. ``eos_id``: the end-of-text id.
    ``uses_attention_mask``: whether the home library passes the padding mask to the text tower."""

    kind = "tokenizer"

    def __init__(self, *, context_length: int, pad_id: int, eos_id: int, uses_attention_mask: bool = False,
                 padding_side: str = "right"):  # fmt: skip
        if padding_side not in ("right", "left"):
            raise TinyViTError(f"{self.kind}: padding side {padding_side!r} is neither right nor left")
        self.context_length = context_length
        self.pad_id = pad_id
        self.eos_id = eos_id
        self.uses_attention_mask = uses_attention_mask
        self.padding_side = padding_side

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.kind}, context_length={self.context_length}, pad_id={self.pad_id})"

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Each text → its ids with the special tokens, at most ``context_length`` of them (no padding)."""
        raise NotImplementedError

    def batch(self, texts: str | list[str]) -> TokenBatch:
        """Texts → ids and attention mask, both (N, context_length)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TinyViTError(f"text {i}: expected a str, got {type(t).__name__}")
        L = self.context_length
        rows = self.encode_batch(texts)
        lengths = np.array([len(row) for row in rows], dtype=np.int64)
        flat = np.fromiter((i for row in rows for i in row), dtype=np.int64, count=int(lengths.sum()))
        position = np.arange(L)[None, :]  # (1, L)
        start = 0 if self.padding_side == "right" else L - lengths[:, None]  # where each text begins
        mask = (position >= start) & (position < start + lengths[:, None])  # (N, L)
        ids = np.full((len(rows), L), self.pad_id, dtype=np.int64)
        ids[mask] = flat  # row by row, left to right: each text's ids in order
        return TokenBatch(torch.from_numpy(ids), torch.from_numpy(mask.astype(np.int64)))

    def __call__(self, texts: str | list[str]) -> torch.Tensor:
        """Texts → ids (N, context_length), int64."""
        return self.batch(texts).ids


def _truncate_keeping_end(ids: list[int], length: int, eos_id: int) -> list[int]:
    """open_clip's truncation: the first ``length`` ids, the last of them replaced by the end token."""
    if len(ids) <= length:
        return ids
    return ids[: length - 1] + [eos_id]


# ---------------------------------------------------------------------------------------------
# open_clip's SimpleTokenizer


@lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character table (open_clip's ``bytes_to_unicode``)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


@lru_cache(maxsize=1)
def clip_bpe_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """OpenAI CLIP's BPE as open_clip builds it from ``bpe_simple_vocab_16e6.txt.gz``: the vocabulary
    (49,408 entries, ``<start_of_text>`` 49406, ``<end_of_text>`` 49407) and the 48,894 merges."""
    lines = gzip.open(BPE_VOCAB).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    chars = list(_bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + ["<start_of_text>", "<end_of_text>"]
    return {v: i for i, v in enumerate(vocab)}, merges


class SimpleTokenizer(Tokenizer):
    """open_clip's ``SimpleTokenizer`` (``clean``: one of CLEANS, open_clip's default "lower")."""

    kind = "open_clip SimpleTokenizer"
    PATTERN = r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""

    def __init__(self, context_length: int = 77, clean: str = "lower"):
        if clean not in CLEANS:
            raise TinyViTError(f"open_clip tokenizer: clean {clean!r} is not one of {', '.join(CLEANS)}")
        vocab, merges = clip_bpe_vocab()
        self.sot_id, eot_id = vocab["<start_of_text>"], vocab["<end_of_text>"]
        super().__init__(context_length=context_length, pad_id=0, eos_id=eot_id)
        self.clean = clean
        _require("ftfy")
        self._pattern = _require("regex").compile(self.PATTERN, _require("regex").IGNORECASE)
        models = _require("tokenizers.models")
        self._bpe = models.BPE(vocab=vocab, merges=merges, end_of_word_suffix="</w>", continuing_subword_prefix="")
        self._byte = _bytes_to_unicode()
        self._cache: dict[str, list[int]] = {"<start_of_text>": [self.sot_id], "<end_of_text>": [eot_id]}

    def _word(self, word: str) -> list[int]:
        ids = self._cache.get(word)
        if ids is None:
            ids = [t.id for t in self._bpe.tokenize("".join(self._byte[b] for b in word.encode("utf-8")))]
            self._cache[word] = ids
        return ids

    def encode_text(self, text: str) -> list[int]:
        """One text → its BPE ids, without start/end tokens (open_clip's ``encode``)."""
        return [i for word in self._pattern.findall(clean_text(text, self.clean)) for i in self._word(word)]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        L = self.context_length
        return [_truncate_keeping_end([self.sot_id, *self.encode_text(t), self.eos_id], L, self.eos_id) for t in texts]


# ---------------------------------------------------------------------------------------------
# tokenizers' Tokenizer: tokenizer.json, or CLIP's vocab.json + merges.txt


class HFTokenizer(Tokenizer):
    """A ``tokenizers.Tokenizer`` with its post-processor's special tokens, truncated to
    ``context_length`` as transformers truncates (the special tokens kept), then padded.
    ``clean``: open_clip's cleaning before it (open_clip's ``HFTokenizer``), or None (transformers)."""

    kind = "tokenizer.json"

    def __init__(self, backend, *, context_length: int, pad_id: int, eos_id: int, clean: str | None = None,
                 uses_attention_mask: bool = False, padding_side: str = "right", kind: str | None = None):  # fmt: skip
        super().__init__(context_length=context_length, pad_id=pad_id, eos_id=eos_id,
                         uses_attention_mask=uses_attention_mask, padding_side=padding_side)  # fmt: skip
        if clean is not None and clean not in CLEANS:
            raise TinyViTError(f"{kind or self.kind}: clean {clean!r} is not one of {', '.join(CLEANS)}")
        self.kind = kind or self.kind
        self.clean = clean
        backend.no_padding()
        backend.enable_truncation(max_length=context_length)
        self.backend = backend

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self.clean is not None:
            texts = [clean_text(t, self.clean) for t in texts]
        return [e.ids for e in self.backend.encode_batch(texts)]


CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def clip_backend(vocab: dict[str, int], merges: list[tuple[str, str]], special: dict[str, str]):
    """The ``tokenizers.Tokenizer`` transformers 5's ``CLIPTokenizer`` assembles from a vocabulary and
    merges: NFC, whitespace runs to one space, lowercase; CLIP's split, byte-level; BPE with ``</w>``;
    ``<|startoftext|> … <|endoftext|>``. ``special``: bos/eos/unk/pad → token."""
    tk = _require("tokenizers")
    from tokenizers import decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    backend = tk.Tokenizer(BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                               end_of_word_suffix="</w>", fuse_unk=False, unk_token=special["unk"]))  # fmt: skip
    backend.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(tk.Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tk.Regex(CLIP_SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])  # fmt: skip
    backend.decoder = decoders.ByteLevel()
    tokens = dict.fromkeys(special[k] for k in ("unk", "bos", "eos", "pad"))  # unique, in transformers' order
    backend.add_special_tokens([tk.AddedToken(t, special=True, normalized=False) for t in tokens])
    eos, bos = special["eos"], special["bos"]
    backend.post_processor = processors.RobertaProcessing(
        (eos, backend.token_to_id(eos)), (bos, backend.token_to_id(bos)), trim_offsets=False, add_prefix_space=False
    )
    return backend


# ---------------------------------------------------------------------------------------------
# transformers' SiglipTokenizer (sentencepiece)


class SentencePieceTokenizer(Tokenizer):
    """transformers 5's ``SiglipTokenizer`` on a ``spiece.model``: the text split at its special tokens
    (whitespace next to them stripped), each part canonicalized (lowercase when ``do_lower_case``,
    punctuation removed, whitespace collapsed) and encoded by sentencepiece after ``<unk>`` (then
    dropped: transformers' way of not adding a prefix space), ``</s>`` appended, truncated, padded."""

    kind = "spiece.model"

    def __init__(self, model_file: str | Path, *, context_length: int = 64, special: dict[str, str] | None = None,
                 do_lower_case: bool = True, uses_attention_mask: bool = True):  # fmt: skip
        spm = _require("sentencepiece")
        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        special = {"eos": "</s>", "unk": "<unk>", "pad": "</s>", **(special or {})}
        self.special = {t: self.sp.piece_to_id(t) for t in dict.fromkeys(special.values())}
        super().__init__(context_length=context_length, pad_id=self.special[special["pad"]],
                         eos_id=self.special[special["eos"]], uses_attention_mask=uses_attention_mask)  # fmt: skip
        self.unk = special["unk"]
        self.unk_length = len(self.sp.encode(self.unk, out_type=str))
        self.do_lower_case = do_lower_case
        alternatives = sorted(self.special, key=len, reverse=True)
        self._split = _require("regex").compile("(" + "|".join(_require("regex").escape(t) for t in alternatives) + ")")

    def _canonicalize(self, text: str) -> str:
        text = text.lower() if self.do_lower_case else text
        text = text.translate(str.maketrans("", "", string.punctuation))
        return _require("regex").sub(r"\s+", " ", text).strip()

    def _pieces(self, text: str) -> list[str]:
        """One part of a text between special tokens → its sentencepiece pieces."""
        pieces = self.sp.encode(self.unk + self._canonicalize(text), out_type=str)
        return pieces[self.unk_length :] if len(pieces) >= self.unk_length else pieces

    def tokenize(self, text: str) -> list[str]:
        """transformers' ``SiglipTokenizer.tokenize``: pieces and special tokens, no ``</s>`` added."""
        parts = self._split.split("▁" + text.replace("▁", " "))  # odd indices: the special tokens
        for i in range(1, len(parts), 2):  # special tokens strip the whitespace beside them
            parts[i - 1], parts[i + 1] = parts[i - 1].rstrip(), parts[i + 1].lstrip()
        tokens = []
        for i, part in enumerate(parts):
            if i % 2:
                tokens.append(part)
            elif part:
                tokens.extend(self._pieces(part))
        if len(tokens) > 1 and tokens[0] == "▁" and tokens[1] in self.special:
            tokens = tokens[1:]
        return tokens

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        out = []
        for text in texts:
            ids = [self.special[t] if t in self.special else self.sp.piece_to_id(t) for t in self.tokenize(text)]
            ids = ids[: self.context_length - 1]  # room for the end token
            out.append(ids if ids and ids[-1] == self.eos_id else [*ids, self.eos_id])
        return out


# ---------------------------------------------------------------------------------------------
# constructors


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TinyViTError(f"{path}: cannot read it as JSON ({e})") from e


def _token(value, default: str) -> str:
    """A special token as tokenizer_config.json / special_tokens_map.json write it (str or dict)."""
    if isinstance(value, dict):
        return str(value.get("content", default))
    return default if value is None else str(value)


def open_clip_tokenizer(config: dict, folder: str | Path | None = None) -> Tokenizer:
    """The tokenizer open_clip's ``get_tokenizer`` gives for an ``open_clip_config.json`` (or its
    ``model_cfg``): :class:`SimpleTokenizer` unless ``text_cfg`` names an ``hf_tokenizer_name``; then
    the ``tokenizer.json`` in ``folder`` (open_clip's ``HFTokenizer``: its ``clean``, default
    "whitespace"; padded to the context length with the tokenizer's pad token)."""
    model_cfg = config.get("model_cfg", config)
    text = model_cfg.get("text_cfg") or {}
    context = int(text.get("context_length", 77))
    kwargs = dict(text.get("tokenizer_kwargs") or {})
    unknown = sorted(set(kwargs) - {"clean"})
    if unknown or text.get("tokenizer_mode") or text.get("hf_model_name"):
        what = unknown or text.get("tokenizer_mode") or text.get("hf_model_name")
        raise TinyViTError(f"open_clip text_cfg: the tokenizer option(s) {what} are not supported")
    name = text.get("hf_tokenizer_name")
    if not name:
        return SimpleTokenizer(context, clean=kwargs.get("clean", "lower"))
    path = Path(folder) / "tokenizer.json" if folder is not None else None
    if path is None or not path.is_file():
        raise TinyViTError(f"open_clip text_cfg names the tokenizer {name!r}: its tokenizer.json is not in {folder}")
    backend = _require("tokenizers").Tokenizer.from_file(str(path))
    settings = _special_tokens(Path(folder), {"pad": "<pad>", "eos": "</s>"})
    return HFTokenizer(backend, context_length=context, pad_id=_token_id(backend, settings["pad"], path),
                       eos_id=_token_id(backend, settings["eos"], path), clean=kwargs.get("clean", "whitespace"),
                       kind=f"open_clip HFTokenizer ({name})")  # fmt: skip


def _special_tokens(folder: Path, defaults: dict[str, str]) -> dict:
    """bos/eos/unk/pad (and the rest of tokenizer_config.json) as the folder's files set them."""
    settings = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the later one wins, as in transformers
        if (folder / name).is_file():
            settings.update(_read_json(folder / name))
    for key, default in defaults.items():
        settings[key] = _token(settings.get(f"{key}_token"), default)
    return settings


def _token_id(backend, token: str, where: Path) -> int:
    i = backend.token_to_id(token)
    if i is None:
        raise TinyViTError(f"{where}: the special token {token!r} is not in its vocabulary")
    return i


def tokenizer_from_files(folder: str | Path, family: str, *, context_length: int | None = None) -> Tokenizer:
    """The tokenizer transformers' processor uses for a saved ``CLIPModel`` / ``SiglipModel`` folder,
    with the padding its ``zero-shot-image-classification`` pipeline applies. ``family``: "clip" or
    "siglip" or "siglip2". CLIP: ``tokenizer.json``, else ``vocab.json`` + ``merges.txt``; padded with its
    pad token (``<|endoftext|>`` by default) to ``context_length`` (default ``model_max_length``, 77).
    SigLIP: ``spiece.model`` (transformers' ``SiglipTokenizer``), padded with ``</s>`` to 64, as the
    pipeline does. SigLIP 2: the Gemma ``tokenizer.json`` as ``Siglip2Tokenizer`` reads it (lowercase
    first), padded with ``<pad>`` to 64."""
    folder = Path(folder)
    if family == "clip":
        return _clip_from_files(folder, context_length)
    if family == "siglip":
        return _siglip_from_files(folder, context_length)
    if family == "siglip2":
        return _siglip2_from_files(folder, context_length)
    raise TinyViTError(f"{folder}: no tokenizer rules for the family {family!r} (clip, siglip, siglip2)")


def _clip_from_files(folder: Path, context_length: int | None) -> Tokenizer:
    tk = _require("tokenizers")
    defaults = {"bos": "<|startoftext|>", "eos": "<|endoftext|>", "unk": "<|endoftext|>", "pad": "<|endoftext|>"}
    settings = _special_tokens(folder, defaults)
    if (folder / "tokenizer.json").is_file():
        backend, kind = tk.Tokenizer.from_file(str(folder / "tokenizer.json")), "tokenizer.json (CLIP)"
    elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        vocab = _read_json(folder / "vocab.json")
        lines = (folder / "merges.txt").read_text(encoding="utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
        backend, kind = clip_backend(vocab, merges, settings), "vocab.json + merges.txt (CLIP)"
    else:
        raise TinyViTError(f"{folder}: no CLIP tokenizer files (tokenizer.json, or vocab.json and merges.txt)")
    context = context_length or int(settings.get("model_max_length") or 77)
    if context > 10**6:  # transformers' "no limit" placeholder
        context = 77
    return HFTokenizer(backend, context_length=context, pad_id=_token_id(backend, settings["pad"], folder),
                       eos_id=_token_id(backend, settings["eos"], folder), uses_attention_mask=True,
                       padding_side=settings.get("padding_side", "right"), kind=kind)  # fmt: skip


def _siglip_from_files(folder: Path, context_length: int | None) -> Tokenizer:
    if not (folder / "spiece.model").is_file():
        raise TinyViTError(f"{folder}: no spiece.model (transformers' SiglipTokenizer reads that file)")
    settings = _special_tokens(folder, {"eos": "</s>", "unk": "<unk>", "pad": "</s>"})
    return SentencePieceTokenizer(
        folder / "spiece.model",
        context_length=context_length or 64,  # the pipeline's max_length, whatever model_max_length says
        special={k: settings[k] for k in ("eos", "unk", "pad")},
        do_lower_case=bool(settings.get("do_lower_case", True)),
    )


def _siglip2_from_files(folder: Path, context_length: int | None) -> Tokenizer:
    """transformers 5's ``Siglip2Tokenizer``: the Gemma tokenizer's vocabulary, merges, added tokens and
    post-processor from ``tokenizer.json``, its own normalizer (lowercase, spaces to ``▁``) and split on
    spaces; the post-processor rebuilt when tokenizer_config.json sets ``add_bos_token`` / ``add_eos_token``."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise TinyViTError(f"{folder}: no tokenizer.json (SigLIP 2's Gemma tokenizer)")
    tk = _require("tokenizers")
    from tokenizers import normalizers, pre_tokenizers, processors

    backend = tk.Tokenizer.from_file(str(path))
    backend.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace(" ", "▁")])
    backend.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous", invert=False)
    settings = _special_tokens(folder, {"bos": "<bos>", "eos": "<eos>", "pad": "<pad>"})
    if "add_bos_token" in settings or "add_eos_token" in settings:  # transformers' update_post_processor
        bos, eos = settings["bos"], settings["eos"]
        add_bos, add_eos = bool(settings.get("add_bos_token")), bool(settings.get("add_eos_token"))
        single = f"{bos + ':0 ' if add_bos else ''}$A:0{' ' + eos + ':0' if add_eos else ''}"
        pair = f"{single}{' ' + bos + ':1' if add_bos else ''} $B:1{' ' + eos + ':1' if add_eos else ''}"
        special = [(t, _token_id(backend, t, path)) for t, used in ((bos, add_bos), (eos, add_eos)) if used]
        backend.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)
    return HFTokenizer(backend, context_length=context_length or 64, pad_id=_token_id(backend, settings["pad"], path),
                       eos_id=_token_id(backend, settings["eos"], path), uses_attention_mask=True,
                       padding_side=settings.get("padding_side", "left"), kind="tokenizer.json (SigLIP 2)")  # fmt: skip


_HF_FAMILIES = {"clip": "clip", "clip_text_model": "clip", "siglip": "siglip", "siglip_text_model": "siglip",
                "siglip2": "siglip2", "siglip2_text_model": "siglip2"}  # fmt: skip


def tokenizer_for_folder(folder: str | Path, *, context_length: int | None = None) -> Tokenizer:
    """The tokenizer of a saved model folder, as its home library picks it: ``open_clip_config.json`` →
    :func:`open_clip_tokenizer`; a transformers ``config.json`` whose ``model_type`` is a CLIP / SigLIP /
    SigLIP 2 model (or its text model) → :func:`tokenizer_from_files` for that family."""
    folder = Path(folder)
    if (folder / "open_clip_config.json").is_file():
        return open_clip_tokenizer(_read_json(folder / "open_clip_config.json"), folder)
    if not (folder / "config.json").is_file():
        raise TinyViTError(f"{folder}: neither open_clip_config.json nor config.json says which tokenizer it uses")
    model_type = str(_read_json(folder / "config.json").get("model_type", ""))
    if model_type not in _HF_FAMILIES:
        raise TinyViTError(f"{folder}: model_type {model_type!r} has no text tower tinyvit tokenizes for")
    return tokenizer_from_files(folder, _HF_FAMILIES[model_type], context_length=context_length)
