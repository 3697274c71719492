"""The ``tinyvit`` command line: one small ``add_*`` / ``run_*`` pair per subcommand.

Each ``run_*`` turns its arguments into a call of the package's Python API and prints the
result; what is computed lives in the modules the pair calls, not here.

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
import urllib.parse
from dataclasses import replace
from pathlib import Path

from tinyvit import __version__
from tinyvit.core.errors import TinyViTError, one_line
from tinyvit.images.spec import INTERPOLATIONS
from tinyvit.run.options import ACCELERATORS, DEFAULT_MODEL, DTYPE_NAMES, HOSTS, ModelOptions, ServeOptions


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


# ---------------------------------------------------------------------------------------------
# Shared options: the model, its preprocessing, Ray


def add_model_options(p: argparse.ArgumentParser, batch: bool = True, model: bool = True) -> None:
    g = p.add_argument_group("model")
    if model:  # serve takes the model as its argument
        g.add_argument(
            "--model",
            default=DEFAULT_MODEL,
            help="zoo NAME[:TAG] or alias, a checkpoint file or folder, or hf-hub:owner/repo (default %(default)s)",
        )
    g.add_argument("--device", default=None, help="e.g. cpu, cuda, cuda:1 (default: cpu)")
    g.add_argument("--dtype", choices=tuple(DTYPE_NAMES), default=None, help="weights dtype (default float32)")
    g.add_argument("--labels", metavar="FILE", help="class names: a file (one per line, or JSON), or imagenet-1k")
    g.add_argument("--arch", metavar="NAME|num_heads=N", help="what the checkpoint's tensors cannot show: a zoo or "
                   "timm architecture name, or fields such as num_heads=6")  # fmt: skip
    if batch:
        g.add_argument(
            "--batch-size", type=positive_int, default=8, help="images per forward pass (default %(default)s)"
        )
        g.add_argument("--fast", action="store_true", help="decode big JPEGs at reduced scale first (not bit-exact)")
    g.add_argument("--exact", action="store_true", help="torch's reference CPU kernels, bit-identical to timm, "
                   "instead of the fastest GEMM path this CPU has (tinyvit models --cpu)")  # fmt: skip
    add_preprocess_options(p)


def add_zero_shot_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("zero-shot", "classes named in words, through a CLIP / SigLIP checkpoint's text tower "
                             "(the tinyvit[text] extra)")  # fmt: skip
    names = g.add_mutually_exclusive_group()
    names.add_argument("--classes", metavar="A,B,…", help="class names, comma-separated, or imagenet")
    names.add_argument("--classes-file", metavar="FILE", help="class names, one per line")
    prompts = g.add_mutually_exclusive_group()
    prompts.add_argument("--template", metavar="T", action="append", help="a prompt with {} where the class name "
                         "goes (default 'This is a photo of {}.'); repeat it to average several")  # fmt: skip
    prompts.add_argument("--templates", metavar="SET|FILE", help="open_clip's ImageNet templates (openai: 80, "
                         "simple: 7), or a file of templates, one per line")  # fmt: skip


def zero_shot_from_args(args: argparse.Namespace) -> dict:
    """``classes`` and ``templates`` as the command line states them (for ModelOptions)."""
    classes = getattr(args, "classes", None)
    if classes is not None and classes.lower() != "imagenet":
        classes = tuple(c.strip() for c in classes.split(",") if c.strip())
    if getattr(args, "classes_file", None):
        classes = _lines(args.classes_file, "--classes-file")
    templates = getattr(args, "templates", None) or (tuple(args.template) if getattr(args, "template", None) else None)
    if isinstance(templates, str) and templates.lower() not in ("openai", "simple"):
        templates = _lines(templates, "--templates")
    if templates is not None and classes is None:
        raise UsageError("--template / --templates go with --classes or --classes-file")
    return {"classes": classes, "templates": templates}


def _lines(path: str, option: str) -> tuple[str, ...]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise TinyViTError(f"{option} {path!r}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    out = tuple(line.strip() for line in lines if line.strip())
    if not out:
        raise TinyViTError(f"{option} {path!r}: no lines")
    return out


def add_preprocess_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "preprocessing", "for checkpoints that do not say how their images were preprocessed, or to override it"
    )
    g.add_argument("--preprocess-like", metavar="NAME[:TAG]|PATH", help="preprocess as these zoo weights do, or "
                   "this checkpoint file or folder (a timm folder's config.json)")  # fmt: skip
    g.add_argument("--crop", type=positive_int, help="side of the square center crop, pixels")
    g.add_argument("--resize", type=positive_int, help="short edge after resizing (default: the crop)")
    g.add_argument("--interpolation", choices=INTERPOLATIONS, help="resize filter (default bicubic)")
    g.add_argument("--mean", nargs="+", metavar="M", help="R G B in 0-255, or imagenet / inception")
    g.add_argument("--std", nargs="+", metavar="S", help="R G B in 0-255, or imagenet / inception")
    g.add_argument("--squash", action="store_true", help="resize to a square ignoring the aspect (HF style)")


def add_ray_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Ray Data (the tinyvit[ray] extra)")
    g.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="run on Ray Data and write Parquet (-o DIR): a local Ray, or the cluster at ADDRESS (auto, "
                   "host:6379, ray://host:10001); inputs may be globs or s3:// / gs:// URIs")  # fmt: skip
    g.add_argument("--ray-actors", type=positive_int, default=1, help="model replicas (default %(default)s)")
    g.add_argument("--num-gpus", type=float, default=0, help="GPUs per actor: 1, or 0.5 for two per GPU (default 0)")
    g.add_argument("--overwrite", action="store_true", help="replace -o if it exists (with --ray: a folder that "
                   "holds files)")  # fmt: skip


def embeddings_output(args: argparse.Namespace) -> Path:
    """``embed``'s -o: a .safetensors or .npy file, not replaced unless --overwrite."""
    output = Path(args.output)
    if output.suffix not in (".safetensors", ".npy"):
        raise UsageError(f"-o {args.output}: the output is a .safetensors or .npy file")
    refuse_existing(output, args.overwrite)
    return output


def refuse_existing(output: str | Path, overwrite: bool) -> None:
    """The one overwrite rule of every command that writes a file (fit, export, embed, convert; --ray
    for its folder): an existing output is replaced only with --overwrite."""
    if Path(output).exists() and not overwrite:
        raise TinyViTError(f"{str(output)!r} exists; pass --overwrite to replace it")


def preprocess_from_args(args: argparse.Namespace):
    """The preprocessing the options state (``--preprocess-like`` and / or explicit values, which
    override its fields), or None."""
    from tinyvit.images.spec import build_spec

    base = preprocess_like(args.preprocess_like) if args.preprocess_like else None
    try:
        return build_spec(base, crop=args.crop, resize=args.resize, interpolation=args.interpolation,
                          mean=args.mean, std=args.std, squash=args.squash)  # fmt: skip
    except ValueError as e:
        raise UsageError(f"preprocessing options: {e} (--crop, --mean, --std; or --preprocess-like NAME)") from None


def preprocess_like(name: str):
    """``--preprocess-like``: the preprocessing of zoo weights (``NAME[:TAG]``), or of a checkpoint
    file or folder (a timm folder: its ``config.json``'s ``pretrained_cfg``; ``hf-hub:owner/repo``).
    A timm architecture name names no weights, so no preprocessing: said, with what to pass."""
    from tinyvit.core.errors import UnknownModelError
    from tinyvit.weights._builder import resolve_preprocess
    from tinyvit.weights.architecture import timm_architecture

    try:
        return resolve_preprocess(name)
    except UnknownModelError:
        if timm_architecture(name) is None:
            raise
        raise UsageError(
            f"--preprocess-like {name}: a timm architecture name, whose weights each have their own preprocessing; "
            "pass the timm folder or checkpoint (its config.json says it), or zoo weights (tinyvit models)"
        ) from None


def options_from_args(args: argparse.Namespace) -> ModelOptions:
    """The model options the command line states (``--device``, ``--dtype``, ``--fast``, ``--labels``,
    the preprocessing options, ``--arch``)."""
    return ModelOptions(device=args.device, dtype=args.dtype, fast=getattr(args, "fast", False), labels=args.labels,
                        preprocess=preprocess_from_args(args), arch=args.arch, exact=getattr(args, "exact", False),
                        **zero_shot_from_args(args))  # fmt: skip


def model_from_args(args: argparse.Namespace):
    from tinyvit.run.runtime import model_for

    return model_for(args.model, options_from_args(args))


def _images(n: int) -> str:
    return f"{n} image" if n == 1 else f"{n} images"


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


# ---------------------------------------------------------------------------------------------
# predict


def add_predict(sub, common) -> argparse.ArgumentParser:
    p = sub.add_parser("predict", help="classify images (files or folders)", parents=[common])
    p.add_argument("images", nargs="+", metavar="IMG|DIR")
    add_model_options(p)
    add_zero_shot_options(p)
    p.add_argument("--top-k", type=positive_int, default=None, help="classes shown per image (default 5)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print one JSON array (rows as they are ready)")
    fmt.add_argument("--jsonl", action="store_true", help="print one JSON object per line, as each is ready")
    add_ray_options(p)
    p.add_argument("-o", "--output", help="with --ray: the output folder of Parquet files")
    p.set_defaults(run=run_predict)
    return p


def run_predict(args: argparse.Namespace) -> int:
    from tinyvit.images.inputs import files_from_args
    from tinyvit.run.session import runner_for

    if args.ray is not None:
        return run_ray_job(args, "predict")
    if args.output:
        raise UsageError("-o is for --ray (Parquet); without it, results go to the standard output")
    inputs = files_from_args(args.images)
    runner = runner_for(args.model, options_from_args(args), task="classify", top_k=args.top_k or 5, progress=True)
    classes = len(runner.names)
    if args.top_k is None:  # the default: 5, or every class of a model with fewer
        runner.top_k = min(5, classes) or 5
    elif 0 < classes < args.top_k:
        print(f"tinyvit: note: --top-k {args.top_k} is more than the model's {classes} classes; showing all {classes}",
              file=sys.stderr)  # fmt: skip
    if runner.head is not None and runner.head.bias is not None:
        print("tinyvit: note: SigLIP scores each class on its own (sigmoid): the scores do not sum to 1",
              file=sys.stderr)  # fmt: skip
    results = runner.stream(inputs, batch_size=args.batch_size, errors="return")
    model = runner.model
    spec = model.weights.spec if model.weights is not None else None
    with StopOnInterrupt() as stop:
        done, failed = _print_predictions(results, args, spec, stop)
        results.close()  # stops the decoding threads
    if stop.hit:
        print(f"tinyvit: interrupted after {done} of {_images(len(inputs))} ({failed} failed)", file=sys.stderr)
        return 130
    if failed:
        print(f"tinyvit: {_images(done - failed)} classified, {failed} failed", file=sys.stderr)
        return 1
    return 0


def _print_predictions(results, args: argparse.Namespace, spec: str | None, stop: StopOnInterrupt) -> tuple[int, int]:
    """Each result as soon as it is ready (text, JSON array or JSON lines); (printed, failed)."""
    out = sys.stdout
    done = failed = 0
    if args.json:
        out.write("[")
    for r in results:
        row = {"model": spec, **r.to_dict(scores=False)}  # all class scores: the Python API has them
        if args.json:
            out.write(("\n" if done == 0 else ",\n") + json.dumps(row, allow_nan=False))
        elif args.jsonl:
            out.write(json.dumps(row, allow_nan=False) + "\n")
        elif r.ok:
            out.write(f"{r.input}\n" + "".join(f"  {p:7.4f}  {name} ({label})\n" for label, name, p in r.topk))
        if not r.ok:
            failed += 1
            print(f"tinyvit: error: {r.error_line()}", file=sys.stderr)
        done += 1
        out.flush()
        if stop.hit:
            break
    if args.json:
        out.write("\n]\n")
        out.flush()
    return done, failed


def run_ray_job(args: argparse.Namespace, kind: str) -> int:
    """``--ray``: the inputs through Ray Data (a local Ray, or the cluster at ADDRESS), to Parquet."""
    if not args.output:
        raise UsageError("--ray writes Parquet: give the output folder with -o OUT.parquet/")
    if Path(args.output).suffix in (".safetensors", ".npy"):
        raise UsageError(f"-o {args.output}: with --ray the output is a folder of Parquet files")
    try:
        from tinyvit.deploy.ray import quiet_logs, run_job
    except ImportError as e:
        raise TinyViTError(str(e) if "tinyvit[ray]" in str(e) else f'pip install "tinyvit[ray]" ({e})') from None
    quiet_logs()

    task = {"top_k": args.top_k or 5} if kind == "predict" else {"normalize": args.normalize}
    try:
        summary = run_job(
            args.images, args.output, args.model, kind=kind, address=None if args.ray == "local" else args.ray,
            actors=args.ray_actors, num_gpus=args.num_gpus, batch_size=args.batch_size, overwrite=args.overwrite,
            options=options_from_args(args), **task,
        )  # fmt: skip
    except KeyboardInterrupt:
        kept = "it keeps the rows written so far" if "://" in args.output else "nothing was written there"
        print(f"tinyvit: interrupted; {kept} ({args.output})", file=sys.stderr)
        return 130
    for path, error in summary.errors:
        print(f"tinyvit: error: {path}: {error}", file=sys.stderr)
    print(f"wrote {summary.output}: {summary.rows} rows, {summary.failed} failed, in {summary.seconds:.1f} s")
    return 1 if summary.failed else 0


# ---------------------------------------------------------------------------------------------
# embed


def add_embed(sub, common) -> argparse.ArgumentParser:
    p = sub.add_parser("embed", help="image embeddings (tinyvit.embed's), or text embeddings (--text), to a "
                       ".safetensors or .npy file", parents=[common])  # fmt: skip
    p.add_argument("images", nargs="*", metavar="IMG|DIR")
    p.add_argument("-o", "--output", required=True, help="FEATS.safetensors or FEATS.npy (--ray: a Parquet folder)")
    p.add_argument("--normalize", action="store_true", help="scale each feature to unit L2 norm")
    p.add_argument("--patches", action="store_true", help="every patch's final token instead (tinyvit.patch_features"
                   "'s): patch_features (N, h, w, D), one grid for all, the preprocessing's crop (a larger one: "
                   "--preprocess-like MODEL --resize N --crop N)")  # fmt: skip
    p.add_argument("--text", action="append", metavar="TEXT", help="embed this text with a CLIP / SigLIP text tower "
                   "instead of images (repeat it for more)")  # fmt: skip
    p.add_argument("--text-file", metavar="FILE", help="embed each line of FILE as a text")
    add_model_options(p)
    add_ray_options(p)
    p.set_defaults(run=run_embed)
    return p


def run_embed(args: argparse.Namespace) -> int:
    from tinyvit.images.inputs import files_from_args
    from tinyvit.run.embeddings import write_embeddings
    from tinyvit.run.runner import Runner

    if args.text or args.text_file:
        return run_embed_text(args)
    if args.patches and (args.ray is not None or args.normalize):
        raise UsageError("--patches writes the patch features as the model gives them, to one file: no --ray, "
                         "no --normalize")  # fmt: skip
    if args.ray is not None:
        return run_ray_job(args, "embed")
    if not args.images:
        raise UsageError("give the images (files, folders) to embed, or --text / --text-file")
    inputs = files_from_args(args.images)
    output = embeddings_output(args)
    model = model_from_args(args)
    runner = Runner(model, task="patches" if args.patches else "embed", normalize=args.normalize, fast=args.fast)
    rows = runner.stream(inputs, batch_size=args.batch_size, errors="return", progress=runner.task)
    dim, what = (runner.patch_shape, "patch features") if args.patches else (runner.embedding_dim, "embeddings")
    layout = {"key": "patch_features", "metadata": {"grid": dim[:2], "patch_size": model.config.patch_size,
                                                    "image_size": runner.spec.crop}} if args.patches else {}

    def until_interrupted(stop: StopOnInterrupt):
        for row in rows:
            if stop.hit:
                rows.close()
                raise KeyboardInterrupt  # write_embeddings removes its temporary file
            yield row

    try:
        with StopOnInterrupt() as stop:
            summary = write_embeddings(
                until_interrupted(stop), output, inputs=[str(p) for p in inputs], dim=dim,
                record=model.weights, normalized=args.normalize, **layout,
            )  # fmt: skip
    except KeyboardInterrupt:
        print(f"tinyvit: interrupted; {output} was not written", file=sys.stderr)
        return 130
    for error in summary.failed.values():
        print(f"tinyvit: error: {error}", file=sys.stderr)
    shape = "x".join(map(str, dim)) if args.patches else dim
    print(f"wrote {summary.path}: {summary.written} {what} of {shape} floats"
          + (f", {_images(len(summary.failed))} failed (rows of NaN)" if summary.failed else ""))  # fmt: skip
    return 1 if summary.failed else 0


def run_embed_text(args: argparse.Namespace) -> int:
    """``embed --text`` / ``--text-file``: the texts through the checkpoint's text tower, to -o."""
    from tinyvit.api import embed_text
    from tinyvit.run.embeddings import write_embeddings
    from tinyvit.run.runner import Embedding

    if args.images or args.ray is not None:
        raise UsageError("--text / --text-file embed texts: give no images and no --ray")
    texts = list(args.text or []) + (list(_lines(args.text_file, "--text-file")) if args.text_file else [])
    output = embeddings_output(args)
    options = options_from_args(args)
    vectors = embed_text(texts, args.model, normalize=args.normalize, options=options)
    summary = write_embeddings((Embedding(t, v) for t, v in zip(texts, vectors, strict=True)), output, inputs=texts,
                               dim=vectors.shape[1], record=None, normalized=args.normalize)  # fmt: skip
    print(f"wrote {summary.path}: {summary.written} text embeddings of {vectors.shape[1]} floats")
    return 0


# ---------------------------------------------------------------------------------------------
# eval, explain


def add_eval(sub, common) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "eval", help="top-1 / top-5 on an ImageFolder tree (subfolders: class ids, names or indices)", parents=[common]
    )
    p.add_argument("root", metavar="DIR")
    add_model_options(p)
    add_zero_shot_options(p)
    p.add_argument("--limit", type=positive_int, default=None, help="at most N images, taken from all classes in turn")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=run_eval)
    return p


def run_eval(args: argparse.Namespace) -> int:
    from tinyvit.run.evaluate import evaluate

    root = Path(args.root)
    if not root.is_dir():  # before the weights are fetched
        raise TinyViTError(f"{args.root!r}: " + ("not a folder" if root.exists() else "no such folder"))
    result = evaluate(root, args.model, batch_size=args.batch_size, limit=args.limit,
                      progress="eval" if not args.json else False, options=options_from_args(args))  # fmt: skip
    for error in result.errors:
        print(f"tinyvit: error: {error}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.to_dict(), allow_nan=False))
    else:
        n, failed = result.images, result.failed
        top5 = f"  top-5 {result.top5:.2f}%" if result.top5 is not None else ""
        scored = f"top-1 {result.top1:.2f}%{top5}  ({n} images" if n else "(no image read"
        print(scored + (f", {failed} failed" if failed else "") + f")  {result.model}")
    return 1 if result.failed or not result.images else 0


def add_explain(sub, common) -> argparse.ArgumentParser:
    p = sub.add_parser("explain", help="draw the class token's attention rollout over an image, or (--pca) the "
                       "patch features' principal components", parents=[common])  # fmt: skip
    p.add_argument("image", metavar="IMG", nargs="+", help="the image (--pca: one or more, side by side)")
    p.add_argument("--pca", action="store_true", help="the first three principal components of the patch features "
                   "as RGB over the photos, as in the DINOv2 paper (components shared by all the photos)")  # fmt: skip
    add_model_options(p, batch=False)
    add_zero_shot_options(p)
    p.add_argument("-o", "--output", help="output picture: .png, .jpg, .webp… (default IMG-NAME.attention.png, "
                   "--pca: IMG-NAME.pca.png, here)")  # fmt: skip
    p.set_defaults(run=run_explain)
    return p


def run_explain(args: argparse.Namespace) -> int:
    from tinyvit.images.inputs import files_from_args
    from tinyvit.run.explain import FORMATS, explain
    from tinyvit.run.runner import model_output
    from tinyvit.run.session import runner_for

    if args.pca:
        return run_explain_pca(args)
    if len(args.image) > 1:
        raise UsageError("explain draws one image's attention; several images go with --pca")
    image = files_from_args(args.image)[0]
    stem = Path(urllib.parse.urlparse(image).path if isinstance(image, str) else image).stem or "image"
    output = Path(args.output or f"{stem}.attention.png")
    if output.suffix.lower() not in FORMATS:
        raise UsageError(f"-o {output}: the picture's format comes from its extension: {', '.join(sorted(FORMATS))}")
    if not output.parent.is_dir():
        raise TinyViTError(f"-o {output}: the folder {str(output.parent)!r} does not exist")
    options = options_from_args(args)
    model = model_from_args(args)
    spec = model.weights.spec if model.weights is not None else args.model
    if model_output(model) == "embedding" and options.classes is None:  # no classes to name: the map alone
        out = explain(image, model, output, caption=spec)
        print(f"{image}: attention rollout drawn in {out}")
        return 0
    top = next(runner_for(model, replace(options, labels=None, preprocess=None, arch=None), top_k=1).stream([image]))
    out = explain(image, model, output, caption=f"{top.name}  {top.score:.2f}   ({spec})")
    print(f"{image}: {top.name} ({top.score:.3f}); attention rollout drawn in {out}")
    return 0


def run_explain_pca(args: argparse.Namespace) -> int:
    """``explain --pca``: the patch features' principal components over the photos (run/pca.py)."""
    from tinyvit.images.inputs import files_from_args
    from tinyvit.run.explain import FORMATS
    from tinyvit.run.pca import explain_pca

    images = files_from_args(args.image)
    stem = Path(urllib.parse.urlparse(images[0]).path if isinstance(images[0], str) else images[0]).stem or "image"
    output = Path(args.output or f"{stem}.pca.png")
    if output.suffix.lower() not in FORMATS:
        raise UsageError(f"-o {output}: the picture's format comes from its extension: {', '.join(sorted(FORMATS))}")
    options = options_from_args(args)
    if options.classes is not None:
        raise UsageError("--pca draws the patch features; it takes no --classes")
    out = explain_pca(images, model_from_args(args), output, preprocess=options.preprocess)
    print(f"{_images(len(images))}: principal components of the patch features drawn in {out}")
    return 0


# ---------------------------------------------------------------------------------------------
# fit


def add_fit(sub, common) -> argparse.ArgumentParser:
    p = sub.add_parser("fit", help="fit a classifier on a model's embeddings of labelled images", parents=[common])
    p.add_argument("train", metavar="TRAIN", help="an ImageFolder tree (a subfolder per class) or a CSV / JSONL of "
                   "path,label (paths relative to the file)")  # fmt: skip
    p.add_argument("-o", "--output", required=True, help="the fitted model, a .safetensors file")
    p.add_argument("--val", metavar="DIR|FILE", help="a held-out set that chooses the regularization and measures "
                   "the accuracy (default: cross-validation on TRAIN)")  # fmt: skip
    p.add_argument("--head-only", action="store_true", help="write only the head; it loads with its base")
    p.add_argument("--cache", nargs="?", const=True, default=False, metavar="FILE", help="keep the embeddings "
                   "(default: OUTPUT.embeddings.safetensors) to fit again in seconds")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="draws the cross-validation folds (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    add_model_options(p)
    p.set_defaults(run=run_fit)
    return p


def run_fit(args: argparse.Namespace) -> int:
    from tinyvit.run.fit import FitOptions, fit_and_report

    if args.labels:
        raise UsageError("--labels: fit takes the class names from TRAIN")
    refuse_existing(args.output, args.overwrite)
    options = FitOptions(val=args.val, head_only=args.head_only, cache=args.cache, seed=args.seed,
                         batch_size=args.batch_size, model=options_from_args(args), progress=not args.json)  # fmt: skip
    fitted = fit_and_report(args.train, args.model, args.output, options)
    for error in fitted.errors:
        print(f"tinyvit: error: {error} (left out)", file=sys.stderr)
    for warning in fitted.warnings:
        print(f"tinyvit: warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(fitted.to_dict(), allow_nan=False))
    else:
        print(fitted.summary())
        for path in fitted.written:
            print(f"wrote {path}")
    return 1 if fitted.errors else 0


# ---------------------------------------------------------------------------------------------
# models, download, convert


def add_models(sub, common) -> argparse.ArgumentParser:
    p = sub.add_parser("models", help="the model zoo: weights, accuracy, size, cached or not", parents=[common])
    p.add_argument("name", nargs="?", metavar="NAME[:TAG]|PATH", help="show the weights record of a zoo name, a "
                   "checkpoint file or folder, or hf-hub:owner/repo")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--markdown", action="store_true", help="print the README's model table")
    p.add_argument("--cpu", action="store_true", help="the GEMM path models run on here and the GFLOP/s measured")
    p.set_defaults(run=run_models)
    return p


def run_models_cpu(args: argparse.Namespace) -> int:
    """``tinyvit models --cpu``: the GEMM path chosen per dtype on this CPU (measured on first use)."""
    from tinyvit.run.cpu import cpu_summary

    summary = cpu_summary()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(summary["cpu"])
    for line in summary["describe"]:
        print(line)
    return 0


def run_models(args: argparse.Namespace) -> int:
    from tinyvit.weights.manifest import entries, markdown_table, resolve, zoo_rows

    if args.cpu:
        return run_models_cpu(args)
    if args.name:
        from tinyvit.weights.specs import ZooSpec, parse_spec

        spec = parse_spec(args.name)
        if isinstance(spec, ZooSpec):
            record = spec.record
        else:  # a checkpoint: what its files say (torch is imported only for these)
            from tinyvit.weights._builder import weights_record

            record = weights_record(spec)
        if args.json:
            print(json.dumps(record.to_dict(), indent=2, ensure_ascii=False))
            return 0
        print(record.describe())
        aliases = entries()[str(record.name)].aliases_of(record.tag) if isinstance(spec, ZooSpec) else []
        if aliases:
            print(f"also known as:  {', '.join(aliases)}")
        return 0
    if args.markdown:
        print(markdown_table())
        return 0
    from tinyvit.weights._hub import is_cached

    rows = zoo_rows()
    for r in rows:
        r["cached"] = is_cached(resolve(f"{r['name']}:{r['tag']}"))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for output, title in (("classes", "Classifiers: ImageNet-1k classes"), ("embedding", "Image embedding models")):
        print(f"{title}\n{'model:tag':<42} {'gives':<22} {'params':>8} {'GMACs':>7} {'top-1':>6} {'top-5':>6} "
              f"{'size':>8}  cached  accuracy from")  # fmt: skip
        for r in (r for r in rows if r["output"] == output):
            top1 = "—" if r["top1"] is None else f"{r['top1']}"
            top5 = "—" if r["top5"] is None else f"{r['top5']}"
            spec = r["name"] + ":" + r["tag"] + (" *" if r["default"] else "")
            gives = "1000 classes" if output == "classes" else r["gives"].split(" + ")[0]
            gives += " +text" if r["text"] else ""
            cached = "yes" if r["cached"] else "no"
            print(f"{spec:<42} {gives:<22} {r['params'] / 1e6:>7.2f}M {r['gmacs']:>7.2f} {top1:>6} {top5:>6} "
                  f"{r['size_mb']:>6}MB  {cached:<6}  {r['metrics_source'] or '—'}")  # fmt: skip
        print()
    print("* the model's default weights (what `--model NAME` without a tag loads)")
    print("+text: a text tower too (fetched on first use): zero-shot --classes, embed --text, search by words")
    return 0


def add_download(sub, common) -> argparse.ArgumentParser:
    p = sub.add_parser("download", help="fetch and verify weights into the cache, for offline use", parents=[common])
    p.add_argument("models", nargs="+", metavar="NAME[:TAG]|hf-hub:REPO")
    p.set_defaults(run=run_download)
    return p


def run_download(args: argparse.Namespace) -> int:
    from tinyvit.api import download

    for spec in args.models:
        print(f"{spec}: {download(spec)}")
    return 0


def add_convert(sub, common) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "convert", help="convert a timm / HF / mmpretrain / JAX checkpoint to tinyvit safetensors", parents=[common]
    )
    p.add_argument("src", help="checkpoint file (.safetensors, .pth, .bin, .npz) or folder (HF save_pretrained)")
    p.add_argument("dst", help="output .safetensors file")
    p.add_argument("--from", dest="layout", default="auto", choices=["auto", "timm", "hf", "mmpretrain", "npz"])
    p.add_argument("--arch", metavar="NAME|num_heads=N", help="what the tensors cannot show: a zoo or timm "
                   "architecture name, or fields such as num_heads=6")  # fmt: skip
    p.add_argument("--labels", metavar="FILE", help="class names: a file (one per line, or JSON), or imagenet-1k")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    add_preprocess_options(p)
    p.set_defaults(run=run_convert)
    return p


def run_convert(args: argparse.Namespace) -> int:
    from tinyvit.weights.convert import convert
    from tinyvit.weights.files import read_header, read_record

    refuse_existing(args.dst, args.overwrite)
    pre = preprocess_from_args(args)
    dst = convert(args.src, args.dst, layout=args.layout, arch=args.arch, labels=args.labels, preprocess=pre)
    record = read_record(dst, read_header(dst))
    print(f"wrote {dst}")
    if record is not None:
        if record.source.kind == "file":  # where the tensors came from (with that file's SHA-256), not dst
            record = replace(record, source=replace(record.source, path=args.src))
        print("  " + record.describe().replace("\n", "\n  "))
        if record.preprocess is None:
            hint = "state it with --preprocess-like NAME[:TAG] or --crop/--mean/--std"
            print(f"  note: the preprocessing is unknown; {hint}")
    return 0


# ---------------------------------------------------------------------------------------------
# export, serve (the onnx and serve extras)


def add_export(sub, common) -> argparse.ArgumentParser:
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
    p.add_argument("--overwrite", action="store_true", help="replace the output if it exists")
    add_preprocess_options(p)
    p.set_defaults(run=run_export, device=None, dtype=None, arch=None)
    return p


def run_export(args: argparse.Namespace) -> int:
    output = Path(args.output)
    if output.suffix != ".onnx":
        raise UsageError(f"-o {args.output}: the output is an .onnx file")
    try:
        from tinyvit.deploy.export import check_onnx, default_check_sizes, export_onnx, read_onnx_metadata
    except ImportError as e:
        raise TinyViTError(f'tinyvit export needs the onnx extra ({e}): pip install "tinyvit[onnx]"') from None
    refuse_existing(output, args.overwrite)
    model = model_from_args(args)
    path = export_onnx(model, output, dynamic_size=args.dynamic_size, dtype=args.onnx_dtype, opset=args.opset)
    size = path.stat().st_size / 2**20
    record = json.loads(read_onnx_metadata(path)["tinyvit.export"])
    shape = "B x 3 x H x W (any size)" if args.dynamic_size else "B x 3 x {}x{}".format(*record["image_size"])
    print(f"wrote {path} ({size:.1f} MiB): pixel_values {shape} -> {record['output']}; {args.onnx_dtype}")
    if not args.check:
        return 0
    deviations = check_onnx(model, path, default_check_sizes(record))
    tol = 1e-4 if args.onnx_dtype == "float32" else 1e-2
    for (h, w), err in deviations.items():
        flag = "" if err <= tol else "  (!)"
        print(f"  ONNX Runtime vs tinyvit at {h}x{w}: max |d {record['output']}| {err:.2g}{flag}")
    if any(err > tol for err in deviations.values()):
        print(f"tinyvit: error: ONNX Runtime differs from tinyvit by more than {tol}", file=sys.stderr)
        return 1
    return 0


def add_serve(sub, common) -> argparse.ArgumentParser:
    d = ServeOptions()
    p = sub.add_parser("serve", help="serve a model over HTTP with dynamic batching (LitServe)", parents=[common])
    p.add_argument("model", help="zoo name, name:tag, tinyvit weights file or hf-hub:owner/repo")
    p.add_argument("--host", default=d.host, choices=HOSTS, help="interface to bind (default %(default)s)")
    p.add_argument("--port", type=int, default=d.port, help="default %(default)s")
    p.add_argument("--max-batch-size", type=int, default=d.max_batch_size, help="default %(default)s")
    p.add_argument(
        "--batch-timeout", type=float, default=d.batch_timeout, help="seconds to fill a batch (default %(default)s)"
    )
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes, help="larger bodies get 413")
    p.add_argument("--workers-per-device", type=int, default=d.workers_per_device, help="default %(default)s")
    p.add_argument("--accelerator", default=d.accelerator, choices=ACCELERATORS)
    p.add_argument("--devices", default=d.devices, help="how many devices (default: all)")
    p.add_argument("--top-k", type=int, default=d.top_k, help="results per image (default %(default)s)")
    p.add_argument("--timeout", type=float, default=d.timeout, help="seconds per request (default %(default)s)")
    p.add_argument("--log-level", default=d.log_level, choices=("critical", "error", "warning", "info", "debug"))
    auth = p.add_mutually_exclusive_group()
    auth.add_argument("--api-key", metavar="KEY", help="require 'Authorization: Bearer KEY' on every request but "
                      "GET /health (default: $TINYVIT_API_KEY; the variable keeps the key out of the process list)")
    auth.add_argument("--no-auth", action="store_true", help="serve --host 0.0.0.0 or :: without a key (behind a "
                      "proxy that authenticates)")  # fmt: skip
    add_model_options(p, batch=False, model=False)  # --device, --dtype, --labels, the preprocessing: as predict
    add_zero_shot_options(p)
    p.set_defaults(run=run_serve)
    return p


def run_serve(args: argparse.Namespace) -> int:
    """Exit status: 130 after Ctrl-C, 0 after SIGTERM, 1 when a server process died (``serve.run``)."""
    names = ("host", "port", "max_batch_size", "batch_timeout", "max_body_bytes", "workers_per_device", "accelerator",
             "top_k", "timeout", "log_level")  # fmt: skip
    model = options_from_args(args)
    try:
        devices = args.devices if args.devices == "auto" else int(args.devices)
        options = ServeOptions(devices=devices, model=model, **{k: getattr(args, k) for k in names})
    except ValueError as e:
        raise UsageError(str(e)) from None
    try:
        from tinyvit.deploy.serve import run
    except ImportError as e:
        raise TinyViTError(str(e) if "tinyvit[serve]" in str(e) else f'pip install "tinyvit[serve]" ({e})') from None
    return run(args.model, options, api_key=args.api_key, no_auth=args.no_auth)


# ---------------------------------------------------------------------------------------------
# index, search


def add_index(sub, common) -> argparse.ArgumentParser:
    p = sub.add_parser("index", help="create or update a searchable index of photos (tinyvit search)",
                       parents=[common])  # fmt: skip
    p.add_argument("images", nargs="+", metavar="IMG|DIR|GLOB", help="photos (files, folders, globs); with --ray: "
                   "the Parquet folders `tinyvit embed --ray` wrote")  # fmt: skip
    p.add_argument("-o", "--output", required=True, metavar="INDEX.tvi", help="the index (a folder) to create or "
                   "update")  # fmt: skip
    p.add_argument("--model", default=None, help=f"the model to embed with (default: the index's; a new index: "
                   f"{DEFAULT_MODEL})")  # fmt: skip
    p.add_argument("--json", action="store_true", help='print one summary object {"added", "updated", "removed", '
                   '"unchanged", "failed"}')  # fmt: skip
    p.add_argument("--ray", action="store_true", help="index the rows (path, embedding, error) of Parquet folders "
                   "written by `tinyvit embed --ray --model M` (pass the same --model)")  # fmt: skip
    p.add_argument("--vectors", choices=("float32", "float16"), default="float32", help="a new index's vectors: "
                   "float32 (scores exactly tinyvit.embed's) or float16 (half the size) (default %(default)s)")
    add_model_options(p, model=False)
    p.set_defaults(run=run_index)
    return p


def run_index(args: argparse.Namespace) -> int:
    from tinyvit.run.search.index import Index, parquet_rows

    o = options_from_args(args)
    index = Index.open(args.output, args.model or (None if Path(args.output).exists() else DEFAULT_MODEL),
                       create=True, vectors=args.vectors, options=o)  # fmt: skip
    report = lambda line: print(f"tinyvit: error: {line}", file=sys.stderr)  # noqa: E731
    try:
        if args.ray:
            summary = index.ingest(row for folder in args.images for row in parquet_rows(folder))
            for line in summary.errors:
                report(line)
        else:
            summary = index.update(args.images, batch_size=args.batch_size, progress="index", on_error=report)
    except KeyboardInterrupt:
        print(f"tinyvit: interrupted; {args.output} keeps what was committed (run the same command to go on)",
              file=sys.stderr)  # fmt: skip
        return 130
    finally:
        index.close()
    counts = summary.to_dict()
    print(json.dumps(counts) if args.json else f"{args.output}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return 1 if summary.failed else 0


def add_search(sub, common) -> argparse.ArgumentParser:
    p = sub.add_parser("search", help="search an index by words, an image, or both ('sunset + 2:beach - people')",
                       parents=[common])  # fmt: skip
    p.add_argument("index", metavar="INDEX.tvi")
    p.add_argument("query", nargs="*", metavar="QUERY", help="words, an image path or URL, or a sum of weighted terms "
                   "('sunset + 2:beach - people', 'photo.jpg - 0.5:night'); several are added up")  # fmt: skip
    p.add_argument("--top-k", type=positive_int, default=10, help="hits shown (default %(default)s)")
    p.add_argument("--json", action="store_true", help='one JSON object per line: {"rank", "score", "path"} (with '
                   '--duplicates: {"group", "paths", "scores"})')  # fmt: skip
    p.add_argument("--html", metavar="OUT.html", help="also write a page of thumbnails with their scores")
    p.add_argument("--duplicates", action="store_true", help="list groups of near-duplicates instead of searching")
    p.add_argument("--threshold", type=float, default=0.95, help="--duplicates: cosine similarity (default 0.95)")
    p.add_argument("--no-ann", action="store_true", help="exact search even where the index has an ANN file (past "
                   "250,000 photos, with tinyvit[search])")  # fmt: skip
    p.add_argument("--model", default=None, help="the model to embed the query with (default: the index's own)")
    add_model_options(p, batch=False, model=False)
    p.set_defaults(run=run_search)
    return p


def run_search(args: argparse.Namespace) -> int:
    from tinyvit.run.search.index import Index
    from tinyvit.run.search.page import write_page

    if bool(args.query) == args.duplicates:
        raise UsageError("give a QUERY, or --duplicates (not both)")
    with Index.open(args.index, args.model, options=options_from_args(args)) as index:
        if args.duplicates:
            groups = index.duplicates(args.threshold)
            sections = [(f"group {i}", [(None, s, p) for p, s in g]) for i, g in enumerate(groups, 1)]
            for i, g in enumerate(groups, 1):
                print(json.dumps({"group": i, "paths": [p for p, _ in g], "scores": [s for _, s in g]}) if args.json
                      else "\n".join([f"group {i}", *(f"  {s:.4f}  {p}" for p, s in g)]))  # fmt: skip
            title = f"{len(groups)} groups of near-duplicates in {args.index} (cosine >= {args.threshold})"
        else:
            hits = index.search(args.query, top_k=args.top_k, exact=args.no_ann or None)
            sections = [("", [(h.rank, h.score, h.path) for h in hits])]
            for h in hits:
                print(json.dumps(h.to_dict()) if args.json else f"{h.rank:4d}  {h.score:.4f}  {h.path}")
            title = f"{' + '.join(args.query)} in {args.index}"
    if args.html:
        print(f"wrote {write_page(args.html, title, sections)}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------

COMMANDS = (add_predict, add_embed, add_eval, add_explain, add_fit, add_models, add_download, add_convert, add_export,
            add_serve, add_index, add_search)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    parser = argparse.ArgumentParser(
        prog="tinyvit", description="Exact, lightweight ViT inference.", parents=[common]
    )
    parser.add_argument("--version", action="version", version=f"tinyvit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        subparser = add(sub, common)
        subparser.set_defaults(subparser=subparser)  # usage errors found later are reported by it
    return parser


def main(argv: list[str] | None = None) -> int:
    args, unknown = build_parser().parse_known_args(sys.argv[1:] if argv is None else list(argv))
    if unknown:  # said by the subcommand, with its usage, not the top level's
        args.subparser.error(f"unrecognized arguments: {' '.join(unknown)}")  # exits with 2
    try:
        return args.run(args)
    except UsageError as e:
        args.subparser.error(str(e))  # exits with 2
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (TinyViTError, OSError, ValueError, RuntimeError) as e:
        if getattr(args, "debug", False):
            raise
        print(f"tinyvit: error: {one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tinyvit: interrupted", file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
