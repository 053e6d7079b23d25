"""Reading the ILSVRC-2012 label files: LOC_val_solution.csv, the devkit, LOC_synset_mapping.txt.

Validation images are labelled by file stem (ILSVRC2012_val_00000001). The devkit's ground truth gives
ILSVRC2012_IDs (1..1000, NOT the sorted-wnid order), which data/meta.mat maps to wnids; the class index
used everywhere else is the position of the wnid in the sorted wnid list.
"""

from __future__ import annotations

import csv
import io
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from alexnet.errors import UserError
from alexnet.files import COMPRESSED_STREAM_ERRORS, cut_short

VAL_STEM = "ILSVRC2012_val_{:08d}"
_META = "data/meta.mat"
_GROUND_TRUTH = "data/ILSVRC2012_validation_ground_truth.txt"


@dataclass
class Labels:
    """What a label source tells: image stem -> wnid, the class list, and optional WordNet words."""

    by_stem: dict[str, str]
    classes: list[str]  # sorted wnids
    words: dict[str, str] = field(default_factory=dict)
    origin: str = ""  # the file the labels came from, for messages


def read_val_solution(path: str | Path) -> Labels:
    """LOC_val_solution.csv: ImageId,PredictionString ("wnid x y x y wnid ..."): the first wnid is the label."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError:
        raise UserError(f"labels file {path} is not UTF-8 text: is it the LOC_val_solution.csv?") from None
    except (OSError, csv.Error) as exc:
        raise UserError(f"cannot read labels file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not rows or [c.strip() for c in rows[0][:2]] != ["ImageId", "PredictionString"]:
        raise UserError(f"{path} is not a LOC_val_solution.csv (first line must be ImageId,PredictionString)")
    by_stem: dict[str, str] = {}
    for number, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) < 2 or not row[1].split():
            raise UserError(f"{path} line {number}: expected 'ImageId,wnid ...'; fix or replace the file")
        by_stem[row[0].strip()] = row[1].split()[0]
    if not by_stem:
        raise UserError(f"{path} has no labels")
    return Labels(by_stem, sorted(set(by_stem.values())), origin=path.name)


def read_synset_mapping(path: str | Path) -> dict[str, str]:
    """LOC_synset_mapping.txt: 'n01440764 tench, Tinca tinca' per line -> {wnid: words}, in file order."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"synset mapping {path} is not UTF-8 text: is it LOC_synset_mapping.txt?") from None
    except OSError as exc:
        raise UserError(f"cannot read synset mapping {path}: {exc.strerror or exc}") from None
    words: dict[str, str] = {}
    for line in lines:
        wnid, _, text = line.strip().partition(" ")
        if wnid:
            words[wnid] = text.strip() or wnid
    if not words:
        raise UserError(f"{path} has no 'wnid words' lines")
    return words


def read_devkit(path: str | Path) -> Labels:
    """ILSVRC2012_devkit_t12.tar.gz (or its extracted folder): validation labels and WordNet words."""
    path = Path(path)
    meta_bytes, truth_bytes = _devkit_files(path)
    try:
        import scipy.io
    except ImportError:
        raise UserError("reading the devkit's meta.mat needs scipy: pip install scipy") from None
    try:
        synsets = scipy.io.loadmat(io.BytesIO(meta_bytes), squeeze_me=True)["synsets"]
        ids = [int(v) for v in synsets["ILSVRC2012_ID"]]
        wnids = [str(v) for v in synsets["WNID"]]
        words = [str(v) for v in synsets["words"]]
        children = [int(v) for v in synsets["num_children"]]
    except Exception as exc:  # a damaged or foreign .mat file
        raise UserError(f"{path}: cannot read {_META} ({type(exc).__name__}: {exc})") from None
    # The 1000 classes are the leaves of the synset tree; inner nodes (num_children > 0) are not classes.
    wnid_of_id = {i: w for i, w, n in zip(ids, wnids, children) if n == 0}
    try:
        truth = [int(line) for line in truth_bytes.decode("ascii").split()]
    except ValueError:
        raise UserError(f"{path}: {_GROUND_TRUTH} must hold one ILSVRC2012_ID per line") from None
    unknown = sorted(set(truth) - set(wnid_of_id))
    if unknown:
        raise UserError(f"{path}: ground truth uses ILSVRC2012_IDs missing from meta.mat: {unknown[:5]}")
    by_stem = {VAL_STEM.format(n): wnid_of_id[i] for n, i in enumerate(truth, start=1)}
    leaf_words = {w: t for w, t, n in zip(wnids, words, children) if n == 0}
    return Labels(by_stem, sorted(wnid_of_id.values()), leaf_words, origin=path.name)


def _devkit_files(path: Path) -> tuple[bytes, bytes]:
    """The bytes of meta.mat and the validation ground truth, from the archive or a folder."""
    if path.is_dir():
        found = {name: next(iter(sorted(path.rglob(Path(name).name))), None) for name in (_META, _GROUND_TRUTH)}
        if None in found.values():
            raise UserError(f"{path} is not an ILSVRC-2012 devkit folder (needs {_META} and {_GROUND_TRUTH})")
        return found[_META].read_bytes(), found[_GROUND_TRUTH].read_bytes()
    try:
        with tarfile.open(path, "r:*") as tar:
            members = {m.name: m for m in tar.getmembers() if m.isfile()}
            wanted = []
            for suffix in (_META, _GROUND_TRUTH):
                name = next((n for n in sorted(members) if n == suffix or n.endswith("/" + suffix)), None)
                if name is None:
                    raise UserError(f"{path} is not an ILSVRC-2012 devkit (no {suffix} inside)")
                wanted.append(tar.extractfile(members[name]).read())
            return wanted[0], wanted[1]
    except COMPRESSED_STREAM_ERRORS as exc:
        raise cut_short(path, exc) from None
    except (tarfile.TarError, OSError) as exc:
        raise UserError(f"cannot read devkit {path}: {exc}") from None
