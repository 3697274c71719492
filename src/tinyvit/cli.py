"""The ``tinyvit`` command line.

Exit codes: 0 ok; 1 runtime error (a one-line message, no traceback unless ``--debug``) or some
images could not be read; 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from tinyvit.errors import TinyViTError

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16"}


def _dtype(name: str | None):
    if name is None:
        return None
    import torch

    return getattr(torch, DTYPES[name])


def _model(args: argparse.Namespace):
    from tinyvit.api import cached_model

    return cached_model(args.model, args.device, _dtype(args.dtype))


# ---------------------------------------------------------------------------------------------
# predict / eval / explain


def _predict(args: argparse.Namespace) -> int:
    from tinyvit.api import image_files, predict

    inputs: list[Path] = []
    for item in args.images:
        p = Path(item)
        inputs.extend(image_files(p) if p.is_dir() else [p])
    if not inputs:
        raise ValueError("no image files found in " + ", ".join(args.images))
    results = predict(
        inputs, _model(args), top_k=args.top_k, batch_size=args.batch_size, errors="return", fast=args.fast
    )
    failed = [r for r in results if not r.ok]
    if args.json:
        rows = []
        for r in results:
            d = r.to_dict()
            del d["pred_scores"]  # 1000 numbers per image: use the Python API for those
            rows.append(d)
        print(json.dumps(rows, indent=2))
    else:
        for r in results:
            if r.ok:
                print(r.input)
                for label, name, score in r.topk:
                    print(f"  {score:7.4f}  {name} ({label})")
    for r in failed:
        print(f"tinyvit: error: {r.error}", file=sys.stderr)
    if failed:
        print(f"tinyvit: {len(results) - len(failed)} images classified, {len(failed)} failed", file=sys.stderr)
        return 1
    return 0


def eval_samples(root: Path, class_ids: list[str], limit: int | None = None) -> list[tuple[Path, int]]:
    """(image, label) pairs of an ImageFolder tree whose subfolders are WordNet ids or class indices.
    With ``limit``, the first images of every class in turn, so that all classes are sampled."""
    from tinyvit.api import image_files

    index = {wnid: i for i, wnid in enumerate(class_ids)}
    per_class = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.name in index:
            label = index[folder.name]
        elif folder.name.isdigit() and int(folder.name) < len(class_ids):
            label = int(folder.name)
        else:
            raise ValueError(f"{folder}: folder name is neither a WordNet id nor a class index")
        per_class.append([(f, label) for f in image_files(folder)])
    if not per_class:
        raise ValueError(f"{root}: no class subfolders")
    samples = [s for group in per_class for s in group]
    if limit is not None:
        interleaved = [group[i] for i in range(max(map(len, per_class))) for group in per_class if i < len(group)]
        samples = interleaved[:limit]
    return samples


def _eval(args: argparse.Namespace) -> int:
    from tinyvit.api import imagenet_classes, predict

    model = _model(args)
    samples = eval_samples(Path(args.root), [wnid for wnid, _ in imagenet_classes()], args.limit)
    results = predict(
        [p for p, _ in samples], model, top_k=5, batch_size=args.batch_size, errors="return", fast=args.fast,
        progress=not args.json,
    )  # fmt: skip
    scored = [(r, label) for r, (_, label) in zip(results, samples, strict=True) if r.ok]
    top1 = sum(r.label == label for r, label in scored)
    top5 = sum(label in [i for i, _, _ in r.topk] for r, label in scored)
    n = len(scored)
    summary = {
        "images": n,
        "failed": len(results) - n,
        "top1": 100.0 * top1 / n if n else None,
        "top5": 100.0 * top5 / n if n else None,
    }
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"top-1 {summary['top1']:.2f}%  top-5 {summary['top5']:.2f}%  ({n} images)" if n else "no images read")
    for r in results:
        if not r.ok:
            print(f"tinyvit: error: {r.error}", file=sys.stderr)
    return 1 if summary["failed"] or not n else 0


def _explain(args: argparse.Namespace) -> int:
    from tinyvit.api import predict
    from tinyvit.explain import explain

    model = _model(args)
    result = predict(args.image, model, top_k=1)
    out = explain(args.image, model, args.output)
    print(f"{args.image}: {result.name} ({result.score:.3f}); attention rollout written to {out}")
    return 0


# ---------------------------------------------------------------------------------------------
# models / download / convert


def model_rows() -> list[dict]:
    from tinyvit.manifest import entries

    rows = []
    for name, e in entries().items():
        for i, s in enumerate(e.sources):
            rows.append({
                "name": name, "tag": s.tag, "default": i == 0, "params": e.params, "gmacs": e.gmacs,
                "top1": s.top1, "top5": s.top5, "metrics_source": s.metrics_source,
                "weights": s.location, "layout": s.layout, "size_mb": round(e.params * 4 / 1e6),
            })  # fmt: skip
    return rows


def _cached(name: str, tag: str) -> bool:
    from tinyvit.hub import cache_dir
    from tinyvit.manifest import find_source

    entry, s = find_source(f"{name}:{tag}")
    if s.kind == "hub" and s.layout == "timm":
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(s.repo_id, s.filename, revision=s.revision), str)
    return any((cache_dir() / "converted" / entry.name).glob(f"{s.tag}-*.safetensors"))


def markdown_table() -> str:
    """The README's model table, generated from the manifest."""
    lines = [
        "| model | weights (tag) | params | GMACs | top-1 | top-5 | accuracy from | file |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for r in model_rows():
        tag = f"`{r['tag']}`" + (" (default)" if r["default"] else "")
        top1 = "—" if r["top1"] is None else f"{r['top1']}"
        top5 = "—" if r["top5"] is None else f"{r['top5']}"
        where = (
            r["weights"].removeprefix("hf://").rsplit("/", 1)[0] if r["weights"].startswith("hf://") else "OpenMMLab"
        )
        lines.append(
            f"| `{r['name']}` | {tag} | {r['params'] / 1e6:.2f} M | {r['gmacs']:.2f} | {top1} | {top5} "
            f"| {r['metrics_source']} | {where} ({r['layout']}) |"
        )
    return "\n".join(lines)


def _models(args: argparse.Namespace) -> int:
    if args.markdown:
        print(markdown_table())
        return 0
    rows = model_rows()
    for r in rows:
        r["cached"] = _cached(r["name"], r["tag"])
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = (
        f"{'model:tag':<42} {'params':>8} {'GMACs':>7} {'top-1':>6} {'top-5':>6} {'size':>8}  cached  accuracy from"
    )
    print(header)
    for r in rows:
        top1 = "—" if r["top1"] is None else f"{r['top1']}"
        top5 = "—" if r["top5"] is None else f"{r['top5']}"
        print(
            f"{r['name'] + ':' + r['tag']:<42} {r['params'] / 1e6:>7.2f}M {r['gmacs']:>7.2f} {top1:>6} {top5:>6} "
            f"{r['size_mb']:>6}MB  {'yes' if r['cached'] else 'no':<6}  {r['metrics_source']}"
        )
    return 0


def _download(args: argparse.Namespace) -> int:
    from tinyvit.api import download

    for spec in args.models:
        print(f"{spec}: {download(spec)}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from tinyvit.conversion import convert
    from tinyvit.weights import read_metadata

    dst = convert(args.src, args.dst, layout=args.layout, arch=args.arch)
    meta = read_metadata(dst)
    print(f"wrote {dst}")
    print(f"  architecture: {meta['tinyvit.config']}")
    print(f"  preprocessing: {meta.get('tinyvit.preprocess', 'unknown (pass a spec to tinyvit.preprocess)')}")
    return 0


# ---------------------------------------------------------------------------------------------


def _add_model_options(p: argparse.ArgumentParser, batch: bool = True) -> None:
    p.add_argument("--model", default="vit-base-p32-384", help="NAME[:TAG] or a weights file (default %(default)s)")
    p.add_argument("--device", default=None, help="e.g. cpu, cuda, cuda:1")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="weights dtype (default float32)")
    if batch:
        p.add_argument("--batch-size", type=int, default=8)
        p.add_argument("--fast", action="store_true", help="decode big JPEGs at reduced scale first (not bit-exact)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinyvit", description="Exact, lightweight ViT inference.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("predict", help="classify images (files or folders)")
    p.add_argument("images", nargs="+", metavar="IMG|DIR")
    _add_model_options(p)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=_predict)

    p = sub.add_parser("eval", help="top-1 / top-5 on an ImageFolder tree (subfolders: WordNet ids or indices)")
    p.add_argument("root", metavar="DIR")
    _add_model_options(p)
    p.add_argument("--limit", type=int, default=None, help="at most N images, taken from all classes in turn")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=_eval)

    p = sub.add_parser("explain", help="draw the class token's attention rollout over an image")
    p.add_argument("image", metavar="IMG")
    _add_model_options(p, batch=False)
    p.add_argument("-o", "--output", required=True, help="output PNG")
    p.set_defaults(run=_explain)

    p = sub.add_parser("models", help="the model zoo: weights, accuracy, size, cached or not")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--markdown", action="store_true", help="print the README's model table")
    p.set_defaults(run=_models)

    p = sub.add_parser("download", help="fetch and verify weights into the cache, for offline use")
    p.add_argument("models", nargs="+", metavar="NAME[:TAG]")
    p.set_defaults(run=_download)

    p = sub.add_parser("convert", help="convert a timm / HF / mmpretrain / JAX checkpoint to tinyvit safetensors")
    p.add_argument("src", help="checkpoint file (.safetensors, .pth, .bin, .npz) or HF save_pretrained folder")
    p.add_argument("dst", help="output .safetensors file")
    p.add_argument("--from", dest="layout", default="auto", choices=["auto", "timm", "hf", "mmpretrain", "npz"])
    p.add_argument("--arch", help="zoo architecture, when the source does not say (e.g. vit-base-p32-384)")
    p.set_defaults(run=_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for option in ("batch_size", "top_k", "limit"):
        value = getattr(args, option, None)
        if value is not None and value < 1:
            parser.error(f"--{option.replace('_', '-')} must be >= 1")
    try:
        return args.run(args)
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (TinyViTError, OSError, ValueError, RuntimeError) as e:
        if args.debug:
            raise
        message = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
        print(f"tinyvit: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tinyvit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
