"""The ``tinyvit`` command line.

Exit codes: 0 ok; 1 runtime error (a one-line message, no traceback unless ``--debug``) or some
images could not be read; 2 usage error; 130 interrupted (Ctrl-C).

Nothing heavy is imported before a command runs: ``tinyvit --help``, ``--version`` and
``tinyvit models`` never import torch.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from tinyvit import __version__
from tinyvit.errors import TinyViTError

DTYPE_NAMES = ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos", "box", "hamming")
MEAN_PRESETS = {"imagenet": (123.675, 116.28, 103.53), "inception": (127.5, 127.5, 127.5)}
STD_PRESETS = {"imagenet": (58.395, 57.12, 57.375), "inception": (127.5, 127.5, 127.5)}


class UsageError(Exception):
    """A bad combination of options, found after parsing: exit code 2, with the subcommand's usage."""


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _triple(name: str, values: list[str] | None, presets: dict) -> tuple[float, float, float] | None:
    if values is None:
        return None
    if len(values) == 1 and values[0].lower() in presets:
        return presets[values[0].lower()]
    try:
        numbers = tuple(float(v) for v in values)
    except ValueError:
        numbers = ()
    if len(numbers) != 3:
        raise UsageError(f"--{name} takes 3 numbers (R G B, in 0-255 pixel values) or one of {', '.join(presets)}")
    return numbers  # type: ignore[return-value]


def preprocess_option(args: argparse.Namespace):
    """The preprocessing the options state: ``--preprocess-like`` and / or explicit values (which
    override the like-spec's fields). None when no option is given."""
    from dataclasses import replace

    from tinyvit.manifest import resolve
    from tinyvit.preprocessing import PreprocessSpec

    explicit = {
        "crop": args.crop,
        "resize": args.resize,
        "interpolation": args.interpolation,
        "mean": _triple("mean", args.mean, MEAN_PRESETS),
        "std": _triple("std", args.std, STD_PRESETS),
        "resize_mode": "squash" if args.squash else None,
    }
    explicit = {k: v for k, v in explicit.items() if v is not None}
    if args.preprocess_like:
        base = resolve(args.preprocess_like).preprocess
        try:
            return replace(base, **explicit) if explicit else base
        except ValueError as e:
            raise UsageError(f"preprocessing options: {e}") from None
    if not explicit:
        return None
    missing = [f"--{k}" for k in ("crop", "mean", "std") if k not in explicit]
    if missing:
        raise UsageError(f"explicit preprocessing needs {', '.join(missing)} (or start from --preprocess-like NAME)")
    try:
        return PreprocessSpec(
            resize=explicit.get("resize", explicit["crop"]),
            crop=explicit["crop"],
            interpolation=explicit.get("interpolation", "bicubic"),
            mean=explicit["mean"],
            std=explicit["std"],
            resize_mode=explicit.get("resize_mode", "short-edge"),
        )
    except ValueError as e:
        raise UsageError(f"preprocessing options: {e}") from None


def _model(args: argparse.Namespace):
    from tinyvit.api import cached_model
    from tinyvit.pipeline import fast_dtype

    dtype = args.dtype
    if dtype is None and getattr(args, "fast", False):
        dtype = fast_dtype(args.device)
    return cached_model(args.model, args.device, dtype, labels=args.labels, preprocess=preprocess_option(args))


def gather_inputs(args_images: list[str]) -> list[Path]:
    """The image files the arguments name — every one checked before any weights are fetched: a
    missing file, a folder without images or a URL fails now, in well under a second."""
    from tinyvit.pipeline import image_files
    from tinyvit.preprocessing import check_path

    inputs: list[Path] = []
    for item in args_images:
        p = Path(item)
        if p.is_dir():
            files = image_files(p)
            if not files:
                raise TinyViTError(f"{item!r}: no image files in this folder")
            inputs.extend(files)
        else:
            inputs.append(check_path(p, repr(item)))
    return inputs


def _row(r, model) -> dict:
    d = r.to_dict(scores=False)  # all class scores: the Python API has them
    return {"model": model.weights.spec if model.weights is not None else None, **d}


class StopOnInterrupt:
    """Within the block, Ctrl-C sets ``hit`` instead of raising, so output is never cut in the
    middle of a line; the loop checks ``hit`` between results. A second Ctrl-C raises at once."""

    def __enter__(self) -> StopOnInterrupt:
        self.hit = False
        self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame) -> None:
        if self.hit:
            raise KeyboardInterrupt
        self.hit = True

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGINT, self._previous)


def _ray_job(args: argparse.Namespace, kind: str) -> int:
    """``--ray``: the inputs through Ray Data (a local Ray, or the cluster at ADDRESS), to Parquet."""
    if not args.output:
        raise UsageError("--ray writes Parquet: give the output folder with -o OUT.parquet/")
    if Path(args.output).suffix in (".safetensors", ".npy"):
        raise UsageError(f"-o {args.output}: with --ray the output is a folder of Parquet files")
    try:
        from tinyvit.ray import run_job
    except ImportError as e:
        raise TinyViTError(str(e) if "tinyvit[ray]" in str(e) else f'pip install "tinyvit[ray]" ({e})') from None

    options = {"device": args.device, "dtype": args.dtype, "fast": args.fast, "labels": args.labels,
               "preprocess": preprocess_option(args)}  # fmt: skip
    options |= {"top_k": args.top_k} if kind == "predict" else {"normalize": args.normalize}
    summary = run_job(
        args.images, args.output, args.model, kind=kind, address=None if args.ray == "local" else args.ray,
        actors=args.ray_actors, num_gpus=args.num_gpus, batch_size=args.batch_size, **options,
    )  # fmt: skip
    for path, error in summary.errors:
        print(f"tinyvit: error: {path}: {error}", file=sys.stderr)
    print(f"wrote {summary.output}: {summary.rows} rows, {summary.failed} failed, in {summary.seconds:.1f} s")
    return 1 if summary.failed else 0


def _predict(args: argparse.Namespace) -> int:
    from tinyvit.pipeline import predict_iter

    if args.ray is not None:
        return _ray_job(args, "predict")
    if args.output:
        raise UsageError("-o is for --ray (Parquet); without it, results go to the standard output")
    inputs = gather_inputs(args.images)
    model = _model(args)
    _note_top_k(args.top_k, model.config.num_classes)
    out = sys.stdout
    done = failed = 0
    results = predict_iter(inputs, model, top_k=args.top_k, batch_size=args.batch_size, errors="return", fast=args.fast)
    if args.json:
        out.write("[")
    with StopOnInterrupt() as stop:
        for r in results:
            if args.json:
                out.write(("\n" if done == 0 else ",\n") + json.dumps(_row(r, model), allow_nan=False))
            elif args.jsonl:
                out.write(json.dumps(_row(r, model), allow_nan=False) + "\n")
            elif r.ok:
                out.write(f"{r.input}\n" + "".join(f"  {p:7.4f}  {name} ({label})\n" for label, name, p in r.topk))
            if not r.ok:
                failed += 1
                print(f"tinyvit: error: {r.error}", file=sys.stderr)
            done += 1
            out.flush()
            if stop.hit:
                break
        results.close()  # stops the decoding threads
    if args.json:
        out.write("\n]\n")
        out.flush()
    if stop.hit:
        print(f"tinyvit: interrupted after {done} of {_images(len(inputs))} ({failed} failed)", file=sys.stderr)
        return 130
    if failed:
        print(f"tinyvit: {_images(done - failed)} classified, {failed} failed", file=sys.stderr)
        return 1
    return 0


def _embed(args: argparse.Namespace) -> int:
    from tinyvit.pipeline import embed_iter, write_embeddings

    if args.ray is not None:
        return _ray_job(args, "embed")
    inputs = gather_inputs(args.images)
    output = Path(args.output)
    if output.suffix not in (".safetensors", ".npy"):
        raise UsageError(f"-o {args.output}: the output is a .safetensors or .npy file")
    model = _model(args)
    rows = embed_iter(
        inputs, model, normalize=args.normalize, batch_size=args.batch_size, errors="return", fast=args.fast,
        progress="embed",
    )  # fmt: skip

    def until_interrupted(stop: StopOnInterrupt):
        for row in rows:
            if stop.hit:
                rows.close()
                raise KeyboardInterrupt  # write_embeddings removes its temporary file
            yield row

    try:
        with StopOnInterrupt() as stop:
            summary = write_embeddings(
                until_interrupted(stop), output, inputs=[str(p) for p in inputs], dim=model.config.embed_dim,
                record=model.weights, normalized=args.normalize,
            )  # fmt: skip
    except KeyboardInterrupt:
        print(f"tinyvit: interrupted; {output} was not written", file=sys.stderr)
        return 130
    for error in summary.failed.values():
        print(f"tinyvit: error: {error}", file=sys.stderr)
    print(f"wrote {summary.path}: {summary.written} embeddings of {model.config.embed_dim} floats"
          + (f", {_images(len(summary.failed))} failed (rows of NaN)" if summary.failed else ""))  # fmt: skip
    return 1 if summary.failed else 0


def _images(n: int) -> str:
    return f"{n} image" if n == 1 else f"{n} images"


def _note_top_k(top_k: int, num_classes: int) -> None:
    if top_k > num_classes:
        note = f"--top-k {top_k} is more than the model's {num_classes} classes; showing all {num_classes}"
        print(f"tinyvit: note: {note}", file=sys.stderr)


def eval_samples(root: Path, categories: list[str], ids: list[str], limit: int | None = None) -> list[tuple[Path, int]]:
    """(image, label) pairs of an ImageFolder tree whose subfolders are named by class id (WordNet
    ids for ImageNet), class name or class index. With ``limit``, the first images of every class
    in turn, so that all classes are sampled."""
    from tinyvit.pipeline import image_files

    if not root.exists():
        raise TinyViTError(f"{str(root)!r}: no such folder")
    if not root.is_dir():
        raise TinyViTError(f"{str(root)!r}: not a folder (eval reads an ImageFolder tree: one subfolder per class)")
    index = {name: i for i, name in enumerate(ids)} | {name: i for i, name in enumerate(categories)}
    per_class = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.name in index:
            label = index[folder.name]
        elif folder.name.isdigit():
            label = int(folder.name)
            if label >= len(categories):
                raise TinyViTError(
                    f"{str(folder)!r}: class index {label} is out of range (the model has {len(categories)} classes)"
                )
        else:
            raise TinyViTError(f"{str(folder)!r}: folder name is neither a class id, a class name nor a class index")
        per_class.append([(f, label) for f in image_files(folder)])
    if not per_class:
        raise TinyViTError(f"{str(root)!r}: no class subfolders")
    samples = [s for group in per_class for s in group]
    if not samples:
        raise TinyViTError(f"{str(root)!r}: the class subfolders hold no image files")
    if limit is not None:
        interleaved = [group[i] for i in range(max(map(len, per_class))) for group in per_class if i < len(group)]
        samples = interleaved[:limit]
    return samples


def _eval(args: argparse.Namespace) -> int:
    from tinyvit.pipeline import class_names, predict_iter
    from tinyvit.record import imagenet_classes

    root = Path(args.root)
    if not root.is_dir():  # before the weights are fetched
        raise TinyViTError(f"{args.root!r}: " + ("not a folder" if root.exists() else "no such folder"))
    model = _model(args)
    names = class_names(model)
    ids = list(imagenet_classes().ids) if tuple(names) == imagenet_classes().names else names
    samples = eval_samples(root, names, ids, args.limit)
    top1 = top5 = failed = 0
    results = predict_iter(
        [p for p, _ in samples], model, top_k=5, batch_size=args.batch_size, errors="return", fast=args.fast,
        progress="eval" if not args.json else False,
    )  # fmt: skip
    for r, (_, label) in zip(results, samples, strict=True):
        if not r.ok:
            failed += 1
            print(f"tinyvit: error: {r.error}", file=sys.stderr)
            continue
        top1 += r.label == label
        top5 += label in [i for i, _, _ in r.topk]
    n = len(samples) - failed
    summary = {
        "model": model.weights.spec if model.weights is not None else args.model,
        "weights": None if model.weights is None else model.weights.source.location,
        "images": n,
        "failed": failed,
        "top1": 100.0 * top1 / n if n else None,
        "top5": 100.0 * top5 / n if n else None,
    }
    if args.json:
        print(json.dumps(summary, allow_nan=False))
    else:
        scored = f"top-1 {summary['top1']:.2f}%  top-5 {summary['top5']:.2f}%  ({n} images" if n else "(no image read"
        print(scored + (f", {failed} failed" if failed else "") + f")  {summary['model']}")
    return 1 if failed or not n else 0


def _explain(args: argparse.Namespace) -> int:
    from tinyvit.explain import FORMATS, explain
    from tinyvit.pipeline import predict

    image = gather_inputs([args.image])[0]
    output = Path(args.output or f"{image.stem}.attention.png")
    if output.suffix.lower() not in FORMATS:
        raise UsageError(f"-o {output}: the picture's format comes from its extension: {', '.join(sorted(FORMATS))}")
    if not output.parent.is_dir():
        raise TinyViTError(f"-o {output}: the folder {str(output.parent)!r} does not exist")
    model = _model(args)
    result = predict(image, model, top_k=1)
    spec = model.weights.spec if model.weights is not None else args.model
    out = explain(image, model, output, caption=f"{result.name}  {result.score:.2f}   ({spec})")
    print(f"{image}: {result.name} ({result.score:.3f}); attention rollout drawn in {out}")
    return 0


# ---------------------------------------------------------------------------------------------
# models / download / convert


def model_rows() -> list[dict]:
    from tinyvit.manifest import entries

    rows = []
    for name, e in entries().items():
        for i, w in enumerate(e.weights):
            m = w.metrics
            rows.append({
                "name": name, "tag": w.tag, "default": i == 0, "params": e.params, "gmacs": e.gmacs,
                "top1": m.top1 if m else None, "top5": m.top5 if m else None, "metrics_source": m.source if m else "",
                "weights": w.source.location, "layout": w.source.layout, "size_mb": round(e.params * 4 / 1e6),
                "aliases": e.aliases_of(w.tag),
            })  # fmt: skip
    return rows


def _cached(name: str, tag: str) -> bool:
    from tinyvit.hub import cache_dir
    from tinyvit.manifest import resolve

    w = resolve(f"{name}:{tag}")
    s = w.source
    if s.kind == "hub" and s.layout == "timm":
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(s.repo_id, s.filename, revision=s.revision), str)
    return any((cache_dir() / "converted" / name).glob(f"{tag}-*.safetensors"))


def markdown_table() -> str:
    """The README's model table, generated from the manifest."""
    lines = [
        "| model | weights (tag) | params | GMACs | top-1 | top-5 | accuracy from | file | also known as |",
        "|---|---|---:|---:|---:|---:|---|---|---|",
    ]
    for r in model_rows():
        tag = f"`{r['tag']}`" + (" (default)" if r["default"] else "")
        top1 = "—" if r["top1"] is None else f"{r['top1']}"
        top5 = "—" if r["top5"] is None else f"{r['top5']}"
        where = (
            r["weights"].removeprefix("hf://").rsplit("/", 1)[0] if r["weights"].startswith("hf://") else "OpenMMLab"
        )
        aliases = ", ".join(f"`{a}`" for a in r["aliases"]) or "—"
        lines.append(
            f"| `{r['name']}` | {tag} | {r['params'] / 1e6:.2f} M | {r['gmacs']:.2f} | {top1} | {top5} "
            f"| {r['metrics_source']} | {where} ({r['layout']}) | {aliases} |"
        )
    return "\n".join(lines)


def _models(args: argparse.Namespace) -> int:
    if args.name:
        from tinyvit.manifest import resolve

        record = resolve(args.name)
        if args.json:
            print(json.dumps(record.to_dict(), indent=2, ensure_ascii=False))
        else:
            print(record.describe())
            aliases = [a for name, e in _entries().items() if name == record.name for a in e.aliases_of(record.tag)]
            if aliases:
                print(f"also known as:  {', '.join(aliases)}")
        return 0
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
        spec = r["name"] + ":" + r["tag"] + (" *" if r["default"] else "")
        print(
            f"{spec:<42} {r['params'] / 1e6:>7.2f}M {r['gmacs']:>7.2f} {top1:>6} {top5:>6} "
            f"{r['size_mb']:>6}MB  {'yes' if r['cached'] else 'no':<6}  {r['metrics_source']}"
        )
    print("* the model's default weights (what `--model NAME` without a tag loads)")
    return 0


def _entries():
    from tinyvit.manifest import entries

    return entries()


def _download(args: argparse.Namespace) -> int:
    from tinyvit.api import download

    for spec in args.models:
        print(f"{spec}: {download(spec)}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from tinyvit.conversion import convert
    from tinyvit.files import read_header, read_record

    dst = convert(
        args.src, args.dst, layout=args.layout, arch=args.arch, labels=args.labels, preprocess=preprocess_option(args)
    )
    record = read_record(dst, read_header(dst))
    print(f"wrote {dst}")
    if record is not None:
        print("  " + record.describe().replace("\n", "\n  "))
        if record.preprocess is None:
            hint = "state it with --preprocess-like NAME[:TAG] or --crop/--mean/--std"
            print(f"  note: the preprocessing is unknown; {hint}")
    return 0


def _export(args: argparse.Namespace) -> int:
    output = Path(args.output)
    if output.suffix != ".onnx":
        raise UsageError(f"-o {args.output}: the output is an .onnx file")
    try:
        from tinyvit.export import check_onnx, default_check_sizes, export_onnx, read_onnx_metadata
    except ImportError as e:
        raise TinyViTError(f'tinyvit export needs the onnx extra ({e}): pip install "tinyvit[onnx]"') from None

    args.fast = False
    model = _model(args)
    path = export_onnx(model, output, dynamic_size=args.dynamic_size, dtype=args.onnx_dtype, opset=args.opset)
    size = path.stat().st_size / 2**20
    shape = "B x 3 x H x W (any size)" if args.dynamic_size else f"B x 3 x {model.config.image_size}^2"
    print(f"wrote {path} ({size:.1f} MiB): pixel_values {shape} -> logits; {args.onnx_dtype}")
    if args.check:
        record = json.loads(read_onnx_metadata(path)["tinyvit.export"])
        deviations = check_onnx(model, path, default_check_sizes(record))
        tol = 1e-4 if args.onnx_dtype == "float32" else 1e-2
        for (h, w), err in deviations.items():
            print(f"  ONNX Runtime vs tinyvit at {h}x{w}: max |dlogit| {err:.2g}" + ("" if err <= tol else "  (!)"))
        if any(err > tol for err in deviations.values()):
            print(f"tinyvit: error: ONNX Runtime differs from tinyvit by more than {tol}", file=sys.stderr)
            return 1
    return 0


def _serve(args: argparse.Namespace) -> int:
    try:
        from tinyvit.serve import main as serve_main
    except ImportError as e:
        raise TinyViTError(str(e) if "tinyvit[serve]" in str(e) else f'pip install "tinyvit[serve]" ({e})') from None
    return serve_main(args.serve_args)


# ---------------------------------------------------------------------------------------------


def _add_model_options(p: argparse.ArgumentParser, batch: bool = True) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default="vit-base-p32-384",
        help="zoo NAME[:TAG] or alias, a checkpoint file or folder, or hf-hub:owner/repo (default %(default)s)",
    )
    g.add_argument("--device", default=None, help="e.g. cpu, cuda, cuda:1 (default: cpu)")
    g.add_argument("--dtype", choices=DTYPE_NAMES, default=None, help="weights dtype (default float32)")
    g.add_argument("--labels", metavar="FILE", help="class names: a file (one per line, or JSON), or imagenet-1k")
    if batch:
        g.add_argument(
            "--batch-size", type=positive_int, default=8, help="images per forward pass (default %(default)s)"
        )
        g.add_argument("--fast", action="store_true", help="decode big JPEGs at reduced scale first (not bit-exact)")
    _add_preprocess_options(p)


def _add_ray_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Ray Data (the tinyvit[ray] extra)")
    g.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run on Ray Data and write Parquet (-o DIR): a local Ray, or the cluster at ADDRESS (auto, "
                   "host:6379, ray://host:10001); inputs may be globs or s3:// / gs:// URIs")  # fmt: skip
    g.add_argument("--ray-actors", type=positive_int, default=1, help="model replicas (default %(default)s)")
    g.add_argument("--num-gpus", type=float, default=0, help="GPUs per actor: 1, or 0.5 for two per GPU (default 0)")


def _add_preprocess_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "preprocessing", "for checkpoints that do not say how their images were preprocessed, or to override it"
    )
    g.add_argument("--preprocess-like", metavar="NAME[:TAG]", help="preprocess as these zoo weights do")
    g.add_argument("--crop", type=positive_int, help="side of the square center crop, pixels")
    g.add_argument("--resize", type=positive_int, help="short edge after resizing (default: the crop)")
    g.add_argument("--interpolation", choices=INTERPOLATIONS, help="resize filter (default bicubic)")
    g.add_argument("--mean", nargs="+", metavar="M", help="R G B in 0-255, or imagenet / inception")
    g.add_argument("--std", nargs="+", metavar="S", help="R G B in 0-255, or imagenet / inception")
    g.add_argument("--squash", action="store_true", help="resize to a square ignoring the aspect (HF style)")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")

    parser = argparse.ArgumentParser(prog="tinyvit", description="Exact, lightweight ViT inference.", parents=[common])
    parser.add_argument("--version", action="version", version=f"tinyvit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("predict", help="classify images (files or folders)", parents=[common])
    p.add_argument("images", nargs="+", metavar="IMG|DIR")
    _add_model_options(p)
    p.add_argument("--top-k", type=positive_int, default=5, help="classes shown per image (default %(default)s)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print one JSON array (rows as they are ready)")
    fmt.add_argument("--jsonl", action="store_true", help="print one JSON object per line, as each is ready")
    _add_ray_options(p)
    p.add_argument("-o", "--output", help="with --ray: the output folder of Parquet files")
    p.set_defaults(run=_predict)

    p = sub.add_parser("embed", help="class-token features of images, to a .safetensors or .npy file", parents=[common])
    p.add_argument("images", nargs="+", metavar="IMG|DIR")
    p.add_argument("-o", "--output", required=True, help="FEATS.safetensors or FEATS.npy (--ray: a Parquet folder)")
    p.add_argument("--normalize", action="store_true", help="scale each feature to unit L2 norm")
    _add_model_options(p)
    _add_ray_options(p)
    p.set_defaults(run=_embed)

    p = sub.add_parser(
        "eval", help="top-1 / top-5 on an ImageFolder tree (subfolders: class ids, names or indices)", parents=[common]
    )
    p.add_argument("root", metavar="DIR")
    _add_model_options(p)
    p.add_argument("--limit", type=positive_int, default=None, help="at most N images, taken from all classes in turn")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=_eval)

    p = sub.add_parser("explain", help="draw the class token's attention rollout over an image", parents=[common])
    p.add_argument("image", metavar="IMG")
    _add_model_options(p, batch=False)
    p.add_argument("-o", "--output", help="output picture: .png, .jpg, .webp… (default IMG-NAME.attention.png here)")
    p.set_defaults(run=_explain)

    p = sub.add_parser("models", help="the model zoo: weights, accuracy, size, cached or not", parents=[common])
    p.add_argument("name", nargs="?", metavar="NAME[:TAG]", help="show the weights record a name resolves to")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--markdown", action="store_true", help="print the README's model table")
    p.set_defaults(run=_models)

    p = sub.add_parser("download", help="fetch and verify weights into the cache, for offline use", parents=[common])
    p.add_argument("models", nargs="+", metavar="NAME[:TAG]|hf-hub:REPO")
    p.set_defaults(run=_download)

    p = sub.add_parser(
        "convert", help="convert a timm / HF / mmpretrain / JAX checkpoint to tinyvit safetensors", parents=[common]
    )
    p.add_argument("src", help="checkpoint file (.safetensors, .pth, .bin, .npz) or folder (HF save_pretrained)")
    p.add_argument("dst", help="output .safetensors file")
    p.add_argument("--from", dest="layout", default="auto", choices=["auto", "timm", "hf", "mmpretrain", "npz"])
    p.add_argument("--arch", help="zoo architecture whose head count to use, when the checkpoint does not say")
    p.add_argument("--labels", metavar="FILE", help="class names: a file (one per line, or JSON), or imagenet-1k")
    _add_preprocess_options(p)
    p.set_defaults(run=_convert)
    p = sub.add_parser(
        "export", help="export a model to ONNX (dynamic batch; --dynamic-size for any image size)", parents=[common]
    )
    p.add_argument("model", metavar="MODEL", help="zoo NAME[:TAG] or alias, a checkpoint, or hf-hub:owner/repo")
    p.add_argument("-o", "--output", required=True, help="output .onnx file")
    p.add_argument("--dynamic-size", action="store_true", help="accept any height and width, not only the trained size")
    p.add_argument("--dtype", dest="onnx_dtype", choices=("float32", "float16"), default="float32",
                   help="weights and compute (input and output stay float32; default %(default)s)")  # fmt: skip
    p.add_argument("--opset", type=positive_int, default=None, help="ONNX opset (default: the exporter's, 20)")
    p.add_argument("--no-check", dest="check", action="store_false", help="skip the ONNX Runtime vs tinyvit check")
    p.add_argument("--labels", metavar="FILE", help="class names: a file (one per line, or JSON), or imagenet-1k")
    _add_preprocess_options(p)
    p.set_defaults(run=_export, device=None, dtype=None)

    p = sub.add_parser(
        "serve", help="serve a model over HTTP with dynamic batching (LitServe)", add_help=False, parents=[common]
    )
    p.add_argument("serve_args", nargs=argparse.REMAINDER, metavar="MODEL [options]", help="see tinyvit serve --help")
    p.set_defaults(run=_serve)

    for subparser in sub.choices.values():
        subparser.set_defaults(subparser=subparser)  # usage errors found later are reported by it
    return parser


def _one_line(e: BaseException) -> str:
    parts = [line.strip() for line in str(e).splitlines() if line.strip()]
    out = ""
    for part in parts:
        out += part if not out else (" " if out.endswith(":") else "; ") + part
    return out or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["serve"] or argv[:2] == ["--debug", "serve"]:  # its options are serve's own parser's
        args = argparse.Namespace(run=_serve, serve_args=argv[argv.index("serve") + 1 :], debug="--debug" in argv[:1])
    else:
        args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)
    try:
        return args.run(args)
    except UsageError as e:
        args.subparser.error(str(e))  # exits with 2
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (TinyViTError, OSError, ValueError, RuntimeError) as e:
        if debug:
            raise
        print(f"tinyvit: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tinyvit: interrupted", file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
