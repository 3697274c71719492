"""Pin weights_manifest.json: fill each source's unknown revision and SHA-256 from the source itself.

Run where the Hub is reachable (maintainers only; the package never needs it):

    python scripts/pin_manifest.py            # Hub sources: commit hash and LFS SHA-256
    python scripts/pin_manifest.py --urls     # also download URL sources to hash them

Hub sources are asked with ``HfApi().model_info(repo, files_metadata=True)`` (``HF_ENDPOINT`` is
honoured). A value already in the manifest is never overwritten: a disagreement is reported and
the script exits with status 1. A URL file whose hash does not start with the prefix its name
carries is reported and not pinned.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def dump_manifest(data: dict) -> str:
    """JSON with two-space indents and short number lists on one line (the manifest's style)."""
    text = json.dumps(data, indent=2)
    text = re.sub(
        r"\[\s+([^\[\]{}\"]*?)\s+\]", lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text
    )
    assert json.loads(text) == data
    return text + "\n"


def hub_pin(source: dict) -> tuple[str, str | None]:
    """(commit hash, LFS SHA-256 of the file) at the source's revision (or main)."""
    from huggingface_hub import HfApi

    info = HfApi().model_info(source["repo_id"], revision=source["revision"], files_metadata=True)
    sibling = next((s for s in info.siblings or [] if s.rfilename == source["filename"]), None)
    if sibling is None:
        raise LookupError(f"{source['repo_id']} has no file {source['filename']}")
    return info.sha, (sibling.lfs.sha256 if sibling.lfs else None)


def url_sha256(url: str) -> str:
    h = hashlib.sha256()
    with urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "tinyvit"}), timeout=60) as r:
        while chunk := r.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def pin(manifest: dict, *, urls: bool) -> list[str]:
    """Fill unknown values in place; returns the problems found."""
    problems = []
    for name, model in manifest["models"].items():
        for s in model["sources"]:
            where = f"{name}:{s['tag']}"
            if s["kind"] == "hub":
                commit, sha = hub_pin(s)
                if s["revision"] is None:
                    s["revision"] = commit
                    print(f"{where}: revision {commit}")
                if sha is None:
                    problems.append(f"{where}: {s['filename']} is not an LFS file; no SHA-256 from the Hub")
                elif s["sha256"] is None:
                    s["sha256"] = sha
                    print(f"{where}: sha256 {sha}")
                elif s["sha256"] != sha:
                    problems.append(f"{where}: the Hub's SHA-256 {sha} differs from the manifest's {s['sha256']}")
            elif urls and s["sha256"] is None:
                sha = url_sha256(s["url"])
                if s.get("sha256_prefix") and not sha.startswith(s["sha256_prefix"]):
                    problems.append(
                        f"{where}: SHA-256 {sha} does not match the prefix {s['sha256_prefix']}; not pinned"
                    )
                else:
                    s["sha256"] = sha
                    print(f"{where}: sha256 {sha}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", type=Path, default=ROOT / "weights_manifest.json")
    parser.add_argument("--urls", action="store_true", help="download URL sources to hash them")
    args = parser.parse_args()
    manifest = json.loads(args.manifest.read_text())
    problems = pin(manifest, urls=args.urls)
    fd, tmp = tempfile.mkstemp(dir=args.manifest.parent, prefix=".manifest.")
    with os.fdopen(fd, "w") as f:
        f.write(dump_manifest(manifest))
    os.replace(tmp, args.manifest)
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
