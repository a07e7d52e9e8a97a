"""params.yaml: one schema, checked before any work starts.

Every section is a pydantic model that forbids unknown keys (a typo names the key and suggests the close
match), checks types and ranges, and holds the one default of each setting. Rows of a study inherit the
study's `defaults`; `Study.row(name)` gives the resolved settings. Failures become one UserError line:

    params.yaml `studies.lin2024.protocols.source`: unknown setting `vall`; did you mean `val`?

Types are strict: a number written as text (`repeats: "3"`) is refused, not converted, while YAML's own
types work as written (an integer where a decimal is expected, `1e-5` without a dot). Names that become
parts of file paths and URLs (rows, protocols, datasets, ...) are restricted to letters, digits, _ . -.
The whole schema stays in this one file, over 400 lines, so every setting can be read in one place.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tlrepro.core import inputs, paths, stage_reads
from tlrepro.core.errors import UserError

# Backbones the registry (tlrepro.modeling.backbones.BACKBONES) builds; a test keeps the two equal.
BackboneName = Literal[
    "MobileNetV2", "MobileNetV3Large", "MobileNetV3Small", "ResNet50V2", "EfficientNetV2B0", "VGG16", "DenseNet121",
    "TinyCNN", "TinyDenseNet",  # smoke-test backbones (random weights only)
]
Preprocessing = Literal["native", "tf", "caffe", "torch", "unit", "raw"]
View = Literal["rot90", "rot180", "rot270", "flip_h", "flip_v", "transpose", "transverse"]
SIDES = ("train", "val", "test")

PosInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
OpenFraction = Annotated[float, Field(gt=0, lt=1)]
Fraction = Annotated[float, Field(ge=0, le=1)]
KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")
PATH_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # a file name (models/<study>/<row>.keras) and a URL part


class Strict(BaseModel):
    """A params section: unknown keys are errors that suggest the closest known key."""

    # strict: "3" is not silently the number 3 (an int is still accepted where a float is expected)
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            known = set(cls.model_fields) | {f.alias for f in cls.model_fields.values() if f.alias}
            for key in data:
                if key not in known:
                    close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.6)
                    hint = f"did you mean `{close[0]}`?" if close else f"known settings: {', '.join(sorted(known))}"
                    raise ValueError(f"unknown setting `{key}`; {hint}")
        return data


class Scale(Strict):
    max_images_per_class: PosInt | None = None
    max_epochs: PosInt | None = None
    # a cross-validation trains its first N folds only (at least 2, so it is still pooled over folds)
    max_folds: Annotated[int, Field(ge=2)] | None = None


class Dataset(Strict):
    slug: str = Field(pattern=r"^[\w.-]+/[\w.-]+$")
    labels: Literal["binary", "folder", "breakhis"]
    classes: list[str] | None = Field(None, min_length=2)  # folder labels: which folders are classes
    group: str | None = None  # index column that must never sit on two sides (e.g. patient, accession)
    folds_file: str | None = None  # the download's own folds (BreakHis: Folds.csv), relative to data/raw/<key>


class Stain(Strict):
    method: Literal["macenko", "reinhard"]
    reference: str  # file name of one image of the source dataset


class Derived(Strict):
    source: str = Field(alias="from")
    stain: Stain


class Leakage(Strict):
    phash_max_distance: int = Field(4, ge=0, le=32)


class Evaluation(Strict):
    bootstrap_resamples: int = Field(1000, ge=100, le=100_000)
    confidence: float = Field(0.95, ge=0.5, lt=1)


class HeadLayer(Strict):
    """One layer of a head: exactly one of pool / batch_norm / dropout / dense."""

    pool: Literal["avg", "max", "flatten"] | None = None
    batch_norm: Literal[True] | None = None
    dropout: Annotated[float, Field(ge=0, lt=1)] | None = None
    dense: PosInt | None = None
    activation: Literal["relu", "sigmoid", "softmax", "linear"] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> HeadLayer:
        kinds = [k for k in ("pool", "batch_norm", "dropout", "dense") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"a head layer needs exactly one of pool, batch_norm, dropout, dense (got {kinds or 'none'})")
        if self.activation is not None and self.dense is None:
            raise ValueError("`activation` belongs to a dense layer")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("pool", "batch_norm", "dropout", "dense") if getattr(self, k) is not None)


class Augmentation(Strict):
    """Keras random layers, active in training only, applied in this order: brightness, flip, rotation,
    shear, zoom, translation. Factors follow Keras: rotation is a fraction of a full turn (0.0556 = 20 deg)."""

    brightness: Annotated[float, Field(gt=0, le=1)] | None = None
    flip: Literal["horizontal", "vertical", "horizontal_and_vertical"] | None = None
    rotation: Annotated[float, Field(gt=0, le=1)] | None = None
    shear: OpenFraction | None = None
    zoom: OpenFraction | None = None
    translation: OpenFraction | None = None
    fill_mode: Literal["reflect", "nearest", "constant", "wrap"] = "reflect"  # Keras's default

    ORDER: ClassVar[tuple[str, ...]] = ("brightness", "flip", "rotation", "shear", "zoom", "translation")

    @model_validator(mode="after")
    def _something(self) -> Augmentation:
        if not self.transforms():
            raise ValueError(f"augmentation needs at least one of {', '.join(self.ORDER)}")
        return self

    def transforms(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in self.ORDER if getattr(self, k) is not None]


class EarlyStopping(Strict):
    monitor: Literal["val_loss", "val_accuracy"]
    patience: NonNegInt
    restore_best_weights: bool = True
    min_delta: Annotated[float, Field(ge=0)] = 0.0


class ReduceLR(Strict):
    monitor: Literal["val_loss", "val_accuracy"]
    factor: OpenFraction
    patience: NonNegInt
    min_lr: Annotated[float, Field(ge=0)] = 0.0


class SqueezeExcitation(Strict):
    """Squeeze-and-excitation blocks inserted into a DenseNet (wang2024)."""

    reduction: PosInt = 16
    dense_layers: bool = True  # after every conv block inside the dense blocks
    transitions: bool = True   # after every transition layer

    @model_validator(mode="after")
    def _somewhere(self) -> SqueezeExcitation:
        if not (self.dense_layers or self.transitions):
            raise ValueError("se needs dense_layers or transitions (or remove `se`)")
        return self


class RowSettings(Strict):
    """What a row (or a study's `defaults`) may set, each with its one default. Rows inherit the study's
    `defaults` key by key: only the keys a row or `defaults` sets explicitly count (pydantic's `exclude_unset`)."""

    backbone: BackboneName | None = None
    weights: Literal["imagenet", "random"] = "imagenet"
    se: SqueezeExcitation | None = None
    init_from: str | None = None  # a `pretraining` entry: start from its trained backbone, new head
    image_size: Annotated[int, Field(ge=32, le=1024)] | None = None
    preprocessing: Preprocessing = "native"
    head: list[HeadLayer] | None = Field(None, min_length=1)
    augmentation: Augmentation | None = None
    augmentation_views: PosInt | None = None
    trainable_layers: NonNegInt | Literal["all"] = 0
    trainable_from: str | None = None  # the backbone layer (by name) from which on everything trains
    start_from: str | None = None  # an earlier row of the same study: continue training its model
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.0  # sgd only
    learning_rate: Annotated[float, Field(gt=0, le=10)] | None = None
    epochs: PosInt | None = None
    max_epochs: PosInt | None = None  # a cap on `epochs` (the paper's count) for practical runs
    batch_size: Annotated[int, Field(ge=1, le=4096)] | None = None
    early_stopping: EarlyStopping | None = None
    reduce_lr: ReduceLR | None = None


REQUIRED_ROW_SETTINGS = ("backbone", "image_size", "batch_size", "head")


class Row(RowSettings):
    """A row's settings with the study's defaults and the schema's defaults filled in: RowSettings itself (one
    source for every field), plus the row's name and the guarantee that the required settings are present."""

    name: str

    @model_validator(mode="after")
    def _complete(self) -> Row:
        missing = [k for k in REQUIRED_ROW_SETTINGS if getattr(self, k) is None]
        if missing:
            raise ValueError(f"row `{self.name}` needs {', '.join(f'`{m}`' for m in missing)}")
        return self

    @property
    def output_units(self) -> int:
        return int(self.head[-1].dense or 0)

    def settings(self) -> dict[str, Any]:
        """Plain settings for cards and reports."""
        return self.model_dump(mode="json", exclude_none=True)


def resolve_row(name: str, defaults: RowSettings, row: RowSettings, *, needs_schedule: bool = True) -> Row:
    merged = {**defaults.model_dump(exclude_unset=True), **row.model_dump(exclude_unset=True)}
    missing = [k for k in REQUIRED_ROW_SETTINGS if merged.get(k) is None]
    if needs_schedule:
        missing += [k for k in ("learning_rate", "epochs") if merged.get(k) is None]
    if missing:
        raise ValueError(f"row `{name}` needs {', '.join(f'`{m}`' for m in missing)} (on the row or in `defaults`)")
    if merged.get("augmentation_views") and not merged.get("augmentation"):
        raise ValueError(f"row `{name}`: `augmentation_views` needs `augmentation`")
    if merged.get("trainable_from") and "trainable_layers" in row.model_fields_set:
        raise ValueError(f"row `{name}`: give `trainable_layers` or `trainable_from`, not both")
    if merged.get("momentum") and merged.get("optimizer") != "sgd":
        raise ValueError(f"row `{name}`: `momentum` is a setting of optimizer sgd")
    return Row(name=name, **{k: v for k, v in merged.items() if v is not None})


class Split(Strict):
    """One split protocol.

    source: the dataset's own train/test folders, `val` of train carved out (stratified by label);
    stratified: shuffle each label's images and cut them train/val/test; grouped: whole groups (patients)
    to each side. Cross-validation: grouped_kfold deals whole groups into `k` folds (label-balanced, seeded),
    each fold testing one and training on the others; folds takes the dataset's own folds (BreakHis's
    Folds.csv, `datasets.<key>.folds_file`). In both, `val` of each fold's training groups validates.
    `views` expands images into dihedral copies, before the split or on train only.
    """

    method: Literal["source", "stratified", "grouped", "grouped_kfold", "folds"]
    train: Fraction | None = None
    val: Fraction | None = None
    test: Fraction | None = None
    k: Annotated[int, Field(ge=2, le=100)] | None = None  # grouped_kfold: number of folds (default 5)
    group: str | None = None  # grouped, grouped_kfold, folds: the index column; default the dataset's `group`
    views: list[View] = Field(default_factory=list)
    expand: Literal["before_split", "train_only"] | None = None

    CROSS_VALIDATION: ClassVar[tuple[str, ...]] = ("grouped_kfold", "folds")

    @model_validator(mode="after")
    def _consistent(self) -> Split:
        if self.k is not None and self.method != "grouped_kfold":
            raise ValueError("`k` is a setting of method grouped_kfold")
        if self.method in ("source", *self.CROSS_VALIDATION):
            if self.train is not None or self.test is not None:
                raise ValueError(f"method `{self.method}` takes only `val` (" + (
                    "train and test are the dataset's folders)" if self.method == "source"
                    else "each fold's test side is its share of the groups)"))
            if self.val is not None and self.val >= 1:
                raise ValueError("`val` must be below 1")
        else:
            fractions = self.fractions()
            if fractions["train"] <= 0:
                raise ValueError("`train` must be above 0")
            if not math.isclose(sum(fractions.values()), 1.0, abs_tol=1e-6):
                raise ValueError(f"train/val/test must sum to 1, not {sum(fractions.values()):g}")
        if bool(self.views) != (self.expand is not None):
            raise ValueError("`views` and `expand` go together")
        if len(set(self.views)) != len(self.views):
            raise ValueError("`views` lists a view twice")
        return self

    @property
    def cross_validation(self) -> bool:
        return self.method in self.CROSS_VALIDATION

    @property
    def folds(self) -> int | None:
        """grouped_kfold's k (5 unless set); None for the dataset's own folds (their count comes from the file)."""
        return (self.k or 5) if self.method == "grouped_kfold" else None

    def fractions(self) -> dict[str, float]:
        if self.method == "source" or self.cross_validation:
            test = 1.0 / self.folds if self.folds else 0.0
            return {"train": 1.0 - (self.val or 0.0), "val": self.val or 0.0, "test": test}
        return {side: float(getattr(self, side) or 0.0) for side in SIDES}

    def has_side(self, side: str) -> bool:
        return ((self.method == "source" or self.cross_validation) and side == "test") or self.fractions()[side] > 0


class Grid(Strict):
    learning_rates: list[Annotated[float, Field(gt=0, le=10)]] = Field(min_length=1)
    epochs: list[PosInt] = Field(min_length=1)


class Pretraining(Strict):
    dataset: str
    classes: list[str] | None = Field(None, min_length=2)
    split: Split
    model: RowSettings

    def row(self, name: str) -> Row:
        return resolve_row(name, RowSettings(), self.model)


class Study(Strict):
    dataset: str
    protocols: dict[str, Split] = Field(min_length=1)  # the first is the primary protocol
    evaluate_on: Literal["val", "test"] = "test"
    predict_on: Literal["val", "test"] | None = None  # a side scored as an unlabelled prediction folder
    per_magnification: bool = False  # one model per magnification (BreakHis), instead of one for all
    repeats: PosInt = 1  # seeds per row: seed, seed + 1, ...
    recall_target: OpenFraction | None = None
    grid: Grid | None = None
    defaults: RowSettings = RowSettings()
    rows: dict[str, RowSettings] = Field(min_length=1)

    @field_validator("rows", "protocols")
    @classmethod
    def _names(cls, value: dict, info: Any) -> dict:  # info: pydantic's ValidationInfo
        what = "row" if info.field_name == "rows" else "protocol"
        for name in value:
            if not PATH_PART.match(name):
                raise ValueError(f"{what} name `{name}` cannot be part of a file name or URL (use letters, digits, "
                                 f"_ . -; a letter or digit first): rename the {what}")
        return value

    @model_validator(mode="after")
    def _rows_resolve(self) -> Study:
        for name in self.rows:
            row = self.row(name)
            if row.start_from is not None:
                earlier = list(self.rows)[: list(self.rows).index(name)]
                if row.start_from not in earlier:
                    raise ValueError(f"row `{name}`: start_from `{row.start_from}` must name an earlier row "
                                     f"({', '.join(earlier) or 'there is none'})")
        for pname, protocol in self.protocols.items():
            for side in filter(None, (self.evaluate_on, self.predict_on)):
                if not protocol.has_side(side):
                    raise ValueError(f"protocol `{pname}` has no `{side}` side, which this study evaluates on")
        return self

    def row(self, name: str) -> Row:
        if name not in self.rows:
            raise UserError(f"Unknown row `{name}`: this study has {', '.join(self.rows)}.")
        return resolve_row(name, self.defaults, self.rows[name], needs_schedule=self.grid is None)

    def all_rows(self) -> list[Row]:
        return [self.row(name) for name in self.rows]

    @property
    def primary_protocol(self) -> str:
        return next(iter(self.protocols))


class Serve(Strict):
    """`tlrepro serve`: the default model, upload limits, request batching, and the bounds that keep the service
    answering under overload (a full queue or a passed deadline is a 503 with Retry-After, at once)."""

    # <study>/<row>; None: the ImageNet-initialised model with the best validation accuracy (never a random one)
    default_model: str | None = None
    max_upload_mb: Annotated[float, Field(gt=0, le=200)] = 10.0  # checked before any decoding
    max_pixels: Annotated[int, Field(ge=1024, le=200_000_000)] = 40_000_000  # decompression-bomb guard
    min_image_side: Annotated[int, Field(ge=1, le=4096)] = 32  # smaller images get a 422 (serve and predict)
    max_batch: Annotated[int, Field(ge=1, le=512)] = 16  # requests that arrive together share one model call
    max_wait_ms: Annotated[float, Field(ge=0, le=1000)] = 5.0  # how long a request waits for others to join
    max_queue: Annotated[int, Field(ge=1, le=10_000)] = 32  # requests waiting per model (and for decoding)
    deadline_s: Annotated[float, Field(ge=0.1, le=600)] = 10.0  # a request not answered by then gets a 503
    decode_workers: Annotated[int, Field(ge=1, le=64)] = 2  # threads decoding JSON, base64 and images
    explain_workers: Annotated[int, Field(ge=1, le=16)] = 1  # threads for Grad-CAM, apart from predictions
    max_explain_queue: Annotated[int, Field(ge=0, le=1000)] = 4  # explanations waiting beyond the running ones
    allow_hosts: list[str] = Field(default_factory=list)  # Host names accepted besides the loopback ones
    allow_origins: list[str] = Field(default_factory=list)  # web origins allowed to POST (and given CORS)

    # what a host name and a web origin may look like, and the example each refusal gives
    _NETWORK: ClassVar[dict[str, tuple[str, str]]] = {
        "allow_hosts": (r"[A-Za-z0-9_.-]+|\[?[0-9A-Fa-f:.]+\]?", "is not a host name: give a name or an address "
                        "without scheme, port or wildcard, e.g. tlrepro.lab.example or 192.168.1.20"),
        "allow_origins": (r"https?://[^/\s?#*]+", "is not a web origin: give scheme://host[:port], e.g. "
                          "https://app.example.org (no path, no wildcard)")}

    @field_validator("allow_hosts", "allow_origins")
    @classmethod
    def _network_names(cls, value: list[str], info: Any) -> list[str]:
        pattern, problem = cls._NETWORK[info.field_name]
        for name in value:
            if not re.fullmatch(pattern, name):
                raise ValueError(f"`{name}` {problem}")
        return [h.strip("[]").lower() for h in value] if info.field_name == "allow_hosts" else value


class Compute(Strict):
    """Where and how TensorFlow runs (tlrepro.modeling.compute). `auto` keeps a CPU run exactly as it was (the
    default strategy, float32, no XLA) and uses every local GPU (MirroredStrategy, float16 where the GPU gains
    from it, XLA) on a GPU machine. `multi_worker` reads the cluster from TF_CONFIG. Batch sizes in params stay
    the global batch; each replica gets its share."""

    strategy: Literal["auto", "default", "mirrored", "multi_worker"] = "auto"
    mixed_precision: Literal["auto", "off", "float16", "bfloat16"] = "auto"
    jit_compile: Literal["auto", "on", "off"] = "auto"
    # multi_worker: how long `tlrepro run` (and each worker's kernel) waits for every other worker in TF_CONFIG
    # to accept a connection before it stops, naming the unreachable address (tlrepro.modeling.compute)
    worker_timeout_s: float = Field(default=30.0, gt=0)


class Params(Strict):
    seed: NonNegInt
    scale: Scale = Scale()
    datasets: dict[str, Dataset] = Field(min_length=1)
    derived: dict[str, Derived] = Field(default_factory=dict)
    leakage: Leakage = Leakage()
    evaluation: Evaluation = Evaluation()
    pretraining: dict[str, Pretraining] = Field(default_factory=dict)
    studies: dict[str, Study] = Field(default_factory=dict)
    serve: Serve = Serve()
    compute: Compute = Compute()

    @field_validator("datasets", "derived", "pretraining", "studies")
    @classmethod
    def _keys(cls, value: dict) -> dict:
        for key in value:
            if not KEY.match(str(key)):
                raise ValueError(f"`{key}` is not a usable name (letters, digits, _ . -; a letter first)")
        return value

    @model_validator(mode="after")
    def _references(self) -> Params:
        clash = set(self.datasets) & set(self.derived)
        if clash:
            raise ValueError(f"`{', '.join(sorted(clash))}` is both in `datasets` and `derived`")
        for key, entry in self.derived.items():
            if entry.source not in self.datasets:
                raise ValueError(f"derived.{key}.from is `{entry.source}`, not one of `datasets` "
                                 f"({', '.join(self.datasets)})")
        for where, name in ([(f"studies.{s}.dataset", v.dataset) for s, v in self.studies.items()]
                            + [(f"pretraining.{p}.dataset", v.dataset) for p, v in self.pretraining.items()]):
            if name not in self.all_datasets():
                raise ValueError(f"{where} is `{name}`, not a known dataset ({', '.join(self.all_datasets())})")
        for study_id, study in self.studies.items():
            for row in study.all_rows():
                if row.init_from is not None and row.init_from not in self.pretraining:
                    raise ValueError(f"studies.{study_id}.rows.{row.name}.init_from is `{row.init_from}`, not a "
                                     f"`pretraining` entry ({', '.join(self.pretraining) or 'there is none'})")
            for pname, protocol in study.protocols.items():
                self._check_cap(f"studies.{study_id}.protocols.{pname}", protocol)
                self._check_folds(f"studies.{study_id}.protocols.{pname}", protocol, study.dataset)
        for key, entry in self.pretraining.items():
            entry.row(key)
            self._check_cap(f"pretraining.{key}.split", entry.split)
            self._check_folds(f"pretraining.{key}.split", entry.split, entry.dataset)
        return self

    def _check_folds(self, where: str, protocol: Split, dataset: str) -> None:
        """`method: folds` takes the dataset's own folds file: the dataset (or a derived one's source) must name it."""
        if protocol.method != "folds":
            return
        source = self.derived[dataset].source if dataset in self.derived else dataset
        if not self.datasets[source].folds_file:
            raise ValueError(f"{where} is method `folds` (the dataset's own folds), but datasets.{source}.folds_file "
                             f"is not set: name the download's folds file (BreakHis: Folds.csv), or use method "
                             f"grouped_kfold")

    def _check_cap(self, where: str, protocol: Split) -> None:
        """A per-class cap must leave at least one image of each class on every side the protocol has."""
        cap = self.scale.max_images_per_class
        if cap is None or protocol.method == "source" or protocol.cross_validation:
            return
        from tlrepro.core.numbers import allocate

        fractions = protocol.fractions()
        needed = next(n for n in range(1, 10_000) if all(
            c > 0 for c, f in zip(allocate(n, list(fractions.values())), fractions.values(), strict=True) if f > 0))
        if cap < needed:
            raise ValueError(f"scale.max_images_per_class is {cap}, but {where} needs at least {needed} images "
                             f"per class to put one on every side")

    def all_datasets(self) -> list[str]:
        return [*self.datasets, *self.derived]

    def dataset(self, key: str) -> Dataset:
        """A dataset's settings; a derived dataset has its source's labels and group."""
        if key in self.datasets:
            return self.datasets[key]
        if key in self.derived:
            return self.datasets[self.derived[key].source]
        raise UserError(f"Unknown dataset `{key}`: params.yaml has {', '.join(self.all_datasets())}"
                        f"{_suggest(key, self.all_datasets())}.")

    def study(self, study_id: str) -> Study:
        if study_id not in self.studies:
            raise UserError(f"Unknown study `{study_id}`: params.yaml `studies` has "
                            f"{', '.join(self.studies) or 'none'}{_suggest(study_id, list(self.studies))}.")
        return self.studies[study_id]

    def epochs(self, row: Row, epochs: int | None = None) -> int:
        """An epoch count after the row's `max_epochs` and the quick-pass cap `scale.max_epochs`."""
        wanted = epochs if epochs is not None else row.epochs
        if wanted is None:
            raise ValueError(f"row `{row.name}` has no epoch count (a grid row: pass the budget)")
        return int(min(c for c in (wanted, row.max_epochs, self.scale.max_epochs) if c))

    def capped_epochs(self, row: Row, grid: Grid | None = None) -> dict[str, Any] | None:
        """The epochs a row ran (`ours`) of the paper's when a cap (its `max_epochs`, the quick pass's
        `scale.max_epochs`) cut them short, else None; a grid row's cells each run their budget, capped."""
        wanted = [row.epochs] if row.epochs else list(grid.epochs) if grid else []
        ran = sorted({self.epochs(row, e) for e in wanted})
        if ran == sorted(set(wanted)):
            return None
        return {"ours": ran[0] if len(ran) == 1 else ", ".join(map(str, ran)),
                "paper": row.epochs or "the grid's " + ", ".join(map(str, wanted))}


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean `{close[0]}`?)" if close else ""


def _one_line(exc: ValidationError, path: Path) -> str:
    errors = exc.errors(include_url=False)
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"])
    message = first["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    shown = f"params.yaml `{where}`" if where else "params.yaml"
    if first["type"] not in ("value_error", "assertion_error", "missing") and "input" in first:
        value = first["input"]
        if not isinstance(value, dict | list):
            shown += f" = {value!r}"
        if isinstance(value, str) and first["type"] in ("int_type", "float_type", "bool_type"):
            message += " (written as text: remove the quotes)"
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    end = "" if message.endswith(("?", ".")) and not more else "."
    return f"{shown}: {message}{more}{end} Fix it in {paths.relative(path)} (or in your `dvc exp run -S`)."


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's decimals: YAML 1.1 reads `1e-5` (no dot) as text, while people,
    and DVC when it writes a `-S` value, mean the number."""


EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$")
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", EXPONENT_FLOAT, list("-+0123456789."))


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path} not found: run from the project folder, or set TLREPRO_ROOT to it.")
    try:
        data = yaml.load(inputs.read_regular(path).decode("utf-8"), Loader=_Loader)  # a SafeLoader
    except OSError as exc:
        raise UserError(f"{paths.relative(path)} cannot be read ({exc.strerror or exc}): make it readable.") from None
    except UnicodeDecodeError:
        raise UserError(f"{paths.relative(path)} is not a UTF-8 text file: restore it (git checkout params.yaml).") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{paths.relative(path)} is not valid YAML{where}: {problem}.") from None
    if not isinstance(data, dict):
        raise UserError(f"{paths.relative(path)} must hold a mapping of sections, e.g. `seed: 42`.")
    return data


@functools.lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int, size: int) -> Params:
    try:
        return Params.model_validate(read_yaml(Path(path)))
    except ValidationError as exc:
        raise UserError(_one_line(exc, Path(path))) from None


def load_params(path: Path | str | None = None) -> Params:
    """params.yaml, validated against the schema; a UserError (one line) names the first bad setting."""
    path = Path(path or paths.PARAMS_FILE)
    try:
        stat = path.stat()
    except OSError:
        raise UserError(f"{path} not found: run from the project folder, or set TLREPRO_ROOT to it.") from None
    return stage_reads.recording(_load(str(path.resolve()), stat.st_mtime_ns, stat.st_size))
