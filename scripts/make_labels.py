"""Write src/tinyvit/imagenet1k_classes.txt from the reference libraries' data files.

One line per class, in class-index order: ``<WordNet id>\\t<names>``. The ids and names come from
timm's data files (imagenet_synsets.txt, imagenet_synset_to_lemma.txt); the names are checked
against mmpretrain's IMAGENET_CATEGORIES. Run with the reference environment (see
scripts/make_fixtures.py).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "tinyvit" / "imagenet1k_classes.txt"


def main() -> None:
    from mmpretrain.datasets.categories import IMAGENET_CATEGORIES

    info = resources.files("timm") / "data" / "_info"
    synsets = (info / "imagenet_synsets.txt").read_text().split()
    lemmas = dict(line.split("\t", 1) for line in (info / "imagenet_synset_to_lemma.txt").read_text().splitlines())
    names = [lemmas[s].strip() for s in synsets]
    assert len(synsets) == len(set(synsets)) == 1000
    mismatches = [(i, a, b) for i, (a, b) in enumerate(zip(names, IMAGENET_CATEGORIES, strict=True)) if a != b]
    assert not mismatches, mismatches[:5]
    OUT.write_text("".join(f"{s}\t{n}\n" for s, n in zip(synsets, names, strict=True)))
    print(f"wrote {OUT} ({len(names)} classes; timm and mmpretrain agree on every name)")


if __name__ == "__main__":
    main()
