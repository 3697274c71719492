"""The ``tinyvit`` command line. Exit codes: 0 ok, 1 runtime error (one line, no traceback unless
``--debug``), 2 usage error."""

from __future__ import annotations

import argparse
import sys

from tinyvit.errors import TinyViTError


def _convert(args: argparse.Namespace) -> int:
    from tinyvit.conversion import convert
    from tinyvit.weights import read_metadata

    dst = convert(args.src, args.dst, layout=args.layout, arch=args.arch)
    meta = read_metadata(dst)
    print(f"wrote {dst}")
    print(f"  architecture: {meta['tinyvit.config']}")
    print(f"  preprocessing: {meta.get('tinyvit.preprocess', 'unknown (pass a spec to tinyvit.preprocess)')}")
    return 0


def _download(args: argparse.Namespace) -> int:
    from tinyvit.api import download

    for spec in args.models:
        print(f"{spec}: {download(spec)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinyvit", description="Exact, lightweight ViT inference.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("convert", help="convert a timm / HF / mmpretrain / JAX checkpoint to tinyvit safetensors")
    p.add_argument("src", help="checkpoint file (.safetensors, .pth, .bin, .npz) or HF save_pretrained folder")
    p.add_argument("dst", help="output .safetensors file")
    p.add_argument("--from", dest="layout", default="auto", choices=["auto", "timm", "hf", "mmpretrain", "npz"])
    p.add_argument("--arch", help="zoo architecture, when the source does not say (e.g. vit-base-p32-384)")
    p.set_defaults(run=_convert)

    p = sub.add_parser("download", help="fetch and verify weights into the cache, for offline use")
    p.add_argument("models", nargs="+", metavar="NAME[:TAG]")
    p.set_defaults(run=_download)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (TinyViTError, OSError, ValueError) as e:
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
