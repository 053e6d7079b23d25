"""Human-readable class names for class ids (ImageNet wnids, CIFAR-10 names, folder names).

ilsvrc2012_classes.tsv (package data) lists the 1000 ILSVRC-2012 wnids in sorted order, each with
torchvision's English category name (torchvision.models.AlexNet_Weights.IMAGENET1K_V1.meta["categories"],
which is in the same order; a test checks the two agree). Reading the file instead of importing
torchvision.models saves seconds per command. Names given by the user (devkit meta.mat,
LOC_synset_mapping.txt) win.
"""

from __future__ import annotations

import functools
from importlib import resources

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@functools.cache
def _ilsvrc2012() -> tuple[tuple[str, ...], tuple[str, ...]]:
    text = resources.files("alexnet.data").joinpath("ilsvrc2012_classes.tsv").read_text(encoding="utf-8")
    rows = [line.split("\t") for line in text.splitlines() if line]
    return tuple(r[0] for r in rows), tuple(r[1] for r in rows)


def ilsvrc2012_wnids() -> tuple[str, ...]:
    """The 1000 ILSVRC-2012 class wnids, sorted (= class index order)."""
    return _ilsvrc2012()[0]


def imagenet_categories() -> tuple[str, ...]:
    """torchvision's 1000 ImageNet category names, in sorted-wnid order."""
    return _ilsvrc2012()[1]


def first_name(words: str) -> str:
    """'tench, Tinca tinca' -> 'tench': the common name that WordNet lists first."""
    return words.split(",")[0].strip()


def class_names(classes: list[str], words: dict[str, str] | None = None) -> list[str]:
    """Names for class ids, in the same order.

    words: wnid -> WordNet words from a devkit or LOC_synset_mapping.txt (first name used). Otherwise
    ILSVRC-2012 wnids (all 1000 or any subset) get torchvision's category names; anything else keeps
    its id (a folder name is already readable).
    """
    if words and all(c in words for c in classes):
        return [first_name(words[c]) for c in classes]
    index = {wnid: i for i, wnid in enumerate(ilsvrc2012_wnids())}
    if classes and all(c in index for c in classes):
        categories = imagenet_categories()
        return [categories[index[c]] for c in classes]
    return list(classes)
