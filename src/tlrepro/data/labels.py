"""Labels from a dataset's `labels` setting, and the class names every later step uses.

- `binary`: the nearest folder named benign or malignant (any case) above the image;
- `folder`: the image's own folder, a leaf folder (e.g. LC25000's five classes); `classes` may restrict it;
- `breakhis`: parsed from BreakHis's file names, which also give subtype, patient folder, accession number and
  magnification.

Class names are defined here once. A binary model's output is P(malignant): index 1 is the positive class.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import PurePath
from typing import Any

import numpy as np
import pandas as pd

from tlrepro.core.errors import UserError

BINARY_CLASSES = ("benign", "malignant")
POSITIVE = BINARY_CLASSES[1]

BREAKHIS_SUBTYPES = {
    "A": ("benign", "adenosis"),
    "F": ("benign", "fibroadenoma"),
    "PT": ("benign", "phyllodes_tumor"),
    "TA": ("benign", "tubular_adenoma"),
    "DC": ("malignant", "ductal_carcinoma"),
    "LC": ("malignant", "lobular_carcinoma"),
    "MC": ("malignant", "mucinous_carcinoma"),
    "PC": ("malignant", "papillary_carcinoma"),
}
# SOB_<B|M>_<subtype>-<patient>-<magnification>-<sequence>, e.g. SOB_B_A-14-22549AB-100-001.png
BREAKHIS_NAME = re.compile(
    r"^SOB_(?P<cls>[BM])_(?P<subtype>[A-Z]+)-(?P<patient>\d+-\d+[A-Z]*)-(?P<magnification>\d+)-\d+$"
)
# `patient` is the folder (slide set) named in the file; `accession` its accession number: folders such as
# 14-22549AB, 14-22549CD and 14-22549G share 14-22549 and may be slides of one patient.
BREAKHIS_COLUMNS = ("subtype", "subtype_name", "patient", "accession", "magnification")
ACCESSION = re.compile(r"^\d+-\d+")
BREAKHIS_MAGNIFICATIONS = (40, 100, 200, 400)  # the microscope's objectives: every BreakHis image is one
# Rejection reasons that data sanity (tlrepro.data.sanity) counts as warnings start with these words.
BAD_MAGNIFICATION = "magnification"
CLASS_DISAGREEMENT = "name and folder disagree"
SCHEMES = ("binary", "folder", "breakhis")


def extra_columns(scheme: str) -> tuple[str, ...]:
    """Index columns a scheme adds beside `label`."""
    return BREAKHIS_COLUMNS if scheme == "breakhis" else ()


def parse_breakhis_name(name: str) -> dict | str:
    """Label, subtype, patient and magnification from a BreakHis file name, or why it does not parse."""
    match = BREAKHIS_NAME.match(PurePath(name).stem)
    if not match:
        return "file name is not BreakHis's SOB_<B|M>_<subtype>-<patient>-<magnification>-<n>"
    code = match["subtype"]
    if code not in BREAKHIS_SUBTYPES:
        return f"unknown BreakHis subtype code {code!r} in file name"
    label, subtype_name = BREAKHIS_SUBTYPES[code]
    if label[0].upper() != match["cls"]:
        return f"file name says {match['cls']} but subtype {code} is {label}"
    magnification = int(match["magnification"])
    if magnification not in BREAKHIS_MAGNIFICATIONS:
        return (f"{BAD_MAGNIFICATION} {magnification}X in the file name is not one of BreakHis's "
                f"{magnifications_text(BREAKHIS_MAGNIFICATIONS)}: check the file")
    return {"label": label, "subtype": code, "subtype_name": subtype_name, "patient": match["patient"],
            "accession": ACCESSION.match(match["patient"]).group(0), "magnification": magnification}


def magnifications_text(values: Sequence[int]) -> str:
    return ", ".join(f"{m}X" for m in sorted(values))


def _breakhis_label(relative: PurePath) -> dict | str:
    """A BreakHis file's fields from its name, refused when a benign/malignant folder above it says otherwise:
    which of the two is right cannot be told from the file, so it is not guessed."""
    fields = parse_breakhis_name(relative.name)
    if isinstance(fields, str):
        return fields
    folder = next((part for part in reversed(relative.parts[:-1]) if part.lower() in BINARY_CLASSES), None)
    if folder is not None and folder.lower() != fields["label"]:
        code = relative.name.split("_")[1]
        return (f"{CLASS_DISAGREEMENT} on the class: the name says {fields['label']} (SOB_{code}), the folder "
                f"`{folder}` says {folder.lower()}: move the file or correct its name")
    return fields


def label_of(relative: PurePath, scheme: str, *, container: bool = False,
             classes: Sequence[str] | None = None) -> dict | str:
    """The label fields of an image (path relative to the dataset folder), or why it has none.

    `container` says the image's folder also holds folders of images: in the folder scheme such an image
    is a stray (LC25000's top folders hold only class folders), not a class of its own.
    """
    folders = [part.lower() for part in relative.parts[:-1]]
    if scheme == "binary":
        label = next((f for f in reversed(folders) if f in BINARY_CLASSES), None)
        return {"label": label} if label else "no benign/malignant folder above it"
    if scheme == "folder":
        if not folders:
            return "not inside a class folder"
        if container:
            return "a stray image beside class folders: move it into one, or delete it"
        label = relative.parent.name
        if classes is not None and label not in classes:
            return f"folder {label!r} is not one of the dataset's classes ({', '.join(classes)})"
        return {"label": label}
    if scheme == "breakhis":
        return _breakhis_label(relative)
    raise ValueError(scheme)


def class_names(labels: pd.Series | Sequence[str], scheme: str, classes: Sequence[str] | None = None) -> tuple[str, ...]:
    """The ordered class names of a model: benign/malignant for binary data, else the sorted folder names."""
    if scheme in ("binary", "breakhis") and classes is None:
        return BINARY_CLASSES
    return tuple(classes) if classes is not None else tuple(sorted(set(labels)))


def encode(labels: pd.Series | Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """Class indices (int32) of label names; a label outside `classes` is a UserError."""
    lookup = {name: i for i, name in enumerate(classes)}
    values = pd.Series(labels, dtype=object).astype(str)
    unknown = sorted(set(values) - set(lookup))
    if unknown:
        raise UserError(f"labels {unknown} are not among the classes {list(classes)}: re-run the split stage.")
    return values.map(lookup).to_numpy(dtype="int32")


def is_binary(classes: Sequence[str]) -> bool:
    return tuple(classes) == BINARY_CLASSES


def predicted_positive(probs: Any, threshold: float) -> np.ndarray:
    """The one threshold rule of every binary model: it says the positive class when P(positive) >= threshold.

    Metrics, prediction, the service, Grad-CAM, the grid and training's accuracy all call this (scikit-learn's
    ROC and precision-recall curves use the same `>=`; Keras's own binary accuracy uses `>`)."""
    return np.asarray(probs) >= threshold
