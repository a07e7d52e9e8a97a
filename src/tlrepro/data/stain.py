"""Stain (colour) normalization of H&E images, fitted once on a reference image.

H&E slides differ in colour from lab to lab and batch to batch; some studies (wang2024: "the original images
are first subjected to color normalization preprocessing") map every image onto one reference's colours
before training. This module wraps torchstain's NumPy normalizers and makes them safe to run over a whole
archive: a bad image (blank, grayscale, degenerate) never raises, it comes back unchanged with the reason.

- torchstain: Barbano et al., https://github.com/EIDOSLAB/torchstain (NumPy backend only, no torch).
- Macenko et al. 2009, "A method for normalizing histology slides for quantitative analysis", ISBI.
- Reinhard et al. 2001, "Color transfer between images", IEEE Computer Graphics and Applications.

Tissue criterion: a pixel is tissue when its optical density OD = -log((I + 1) / 240) is at least 0.15 in
all three channels, exactly the pixels torchstain's Macenko keeps to estimate stain vectors (Io=240,
beta=0.15). An image whose tissue fraction is below `min_tissue_fraction` is not normalized, with either
method: Macenko has too few pixels to estimate stains, and Reinhard would stretch background noise to the
reference's contrast.

Black counts as tissue by that criterion (its optical density is the highest there is), so two more checks
keep an image in its original colours, counted as a fallback: a blank image (one flat colour, black, grey or
any other: nothing to estimate stains from; Macenko would paint it in one of the reference's colours), and a
saturated one (most of its "tissue" clipped to black). A result that came out as one flat colour from an
image that was not is refused the same way.

A fitted normalizer is written into the card of every model trained on its images (`card`, with the fitted
reference's numbers) and rebuilt from it (`from_card`) without the dataset, so prediction applies the very
step training saw.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torchstain
from PIL import Image
from tqdm import tqdm

from tlrepro.core import fileio, inputs
from tlrepro.data.images import to_rgb

METHODS = ("macenko", "reinhard")
CARD_STEP = "stain_normalization"  # the step's name in a model card's `before_model`
# The fitted reference: torchstain's attributes per method (Macenko: stain vectors and concentration
# percentiles; Reinhard: LAB means and standard deviations).
FITTED = {"macenko": ("HERef", "maxCRef"), "reinhard": ("target_means", "target_stds")}
# torchstain's Macenko defaults, passed explicitly so the tissue criterion stays in step with it.
IO = 240
ALPHA = 1
BETA = 0.15
# Turn NumPy's silent NaN/inf (e.g. 0/0 on a flat channel, which Reinhard casts to a black image) into errors.
_FP_ERRORS = {"divide": "raise", "invalid": "raise", "over": "raise"}
# A channel whose pixel values spread less than this (standard deviation, grey levels) is flat: mere noise.
FLAT_SPREAD = 3.0
BLACK = 8  # a pixel with every channel at or below this is clipped black, not stained tissue
MAX_BLACK_FRACTION = 0.5  # of the tissue pixels; above it the image is saturated


@dataclass(frozen=True, eq=False)
class StainResult:
    """A normalized image (uint8 HxWx3), or the original one with `normalized=False` and the reason."""

    image: np.ndarray
    normalized: bool
    reason: str | None = None


def tissue_fraction(image: np.ndarray) -> float:
    """Fraction of pixels of an HxWx3 RGB image whose optical density is at least BETA in every channel."""
    od = -np.log((image.reshape(-1, 3).astype(np.float64) + 1) / IO)
    return float(np.all(od >= BETA, axis=1).mean())


def _spread(image: np.ndarray) -> float:
    """The largest per-channel standard deviation of an HxWx3 image's pixel values."""
    return float(image.reshape(-1, 3).std(axis=0).max())


def _content_problem(image: np.ndarray) -> str | None:
    """Why an image with enough tissue pixels still cannot be normalized: blank or saturated, or None."""
    if (spread := _spread(image)) < FLAT_SPREAD:
        return f"blank image (one flat colour: pixel values spread {spread:.1f} grey levels)"
    pixels = image.reshape(-1, 3)
    od = -np.log((pixels.astype(np.float64) + 1) / IO)
    tissue = np.all(od >= BETA, axis=1)
    black = np.all(pixels <= BLACK, axis=1) & tissue
    if tissue.any() and (share := black.sum() / tissue.sum()) > MAX_BLACK_FRACTION:
        return f"saturated image ({share:.0%} of its tissue pixels are clipped black)"
    return None


def _shape_problem(image: np.ndarray) -> str | None:
    if not isinstance(image, np.ndarray):
        return f"expected a NumPy array, got {type(image).__name__}"
    if image.ndim == 2:
        return "grayscale image (HxW); stain normalization needs RGB"
    if image.ndim != 3 or image.shape[2] != 3 or image.size == 0:
        return f"expected an HxWx3 RGB image, got shape {image.shape}"
    if image.dtype != np.uint8:
        return f"expected uint8 pixels, got {image.dtype}"
    return None


def _as_uint8(out: object, shape: tuple[int, ...]) -> np.ndarray:
    """torchstain's output as uint8 of `shape`, or ValueError when it is unusable."""
    out = np.asarray(out)
    if out.shape != shape:
        raise ValueError(f"output shape {out.shape} differs from input shape {shape}")
    if out.dtype == np.uint8:
        return out
    out = out.astype(np.float64)
    if not np.isfinite(out).all():
        raise ValueError("non-finite output values")
    # One level of slack for rounding; anything further out means the method went wrong.
    if out.min() < -1 or out.max() > 256:
        raise ValueError(f"output values out of range [{out.min():.1f}, {out.max():.1f}]")
    return np.rint(np.clip(out, 0, 255)).astype(np.uint8)


class StainNormalizer:
    """Maps H&E images onto the colours of one reference image with Macenko or Reinhard normalization.

    `normalize` accepts only HxWx3 uint8 RGB images; anything else (HxW grayscale included) is returned
    unchanged, not converted, with `normalized=False` and the reason. Fallback results hold the very input
    array, not a copy. Fitted state is only read after `__init__`, so one instance can serve many threads.
    """

    def __init__(self, method: str, reference: np.ndarray | None = None, *, min_tissue_fraction: float = 0.01,
                 fitted: dict[str, list] | None = None) -> None:
        """Fit to `reference` (an HxWx3 uint8 image), or take an earlier fit's numbers (`fitted`, see `card`)."""
        if method not in METHODS:
            raise ValueError(f"unknown stain normalization method {method!r}; expected one of {METHODS}")
        if not 0 <= min_tissue_fraction <= 1:
            raise ValueError(f"min_tissue_fraction must lie in [0, 1], got {min_tissue_fraction}")
        if (reference is None) == (fitted is None):
            raise ValueError("give either a reference image to fit or the fitted numbers of one")
        self.method = method
        self.min_tissue_fraction = min_tissue_fraction
        macenko = method == "macenko"
        if macenko:
            self.fitted = torchstain.normalizers.MacenkoNormalizer(backend="numpy")
        else:
            self.fitted = torchstain.normalizers.ReinhardNormalizer(backend="numpy")
        self._options = {"Io": IO, "alpha": ALPHA, "beta": BETA} if macenko else {}

        def unusable(why: str) -> ValueError:
            return ValueError(f"the {method} reference{' image' if fitted is None else ''} is unusable: {why}")

        if fitted is not None:
            try:
                for name in FITTED[method]:
                    setattr(self.fitted, name, np.asarray(fitted[name], dtype=np.float64))
            except (KeyError, TypeError, ValueError) as exc:
                raise unusable(f"its fitted numbers lack or garble {exc}") from None
        else:
            if problem := _shape_problem(reference):
                raise unusable(problem)
            if (fraction := tissue_fraction(reference)) < min_tissue_fraction:
                raise unusable(f"too little tissue ({fraction:.2%} of pixels, minimum {min_tissue_fraction:.2%})")
            try:
                with np.errstate(**_FP_ERRORS):
                    self.fitted.fit(reference, **self._options)
            except Exception as exc:
                raise unusable(f"fitting failed: {type(exc).__name__}: {exc}") from exc
        # fit() can also "succeed" with parameters that would ruin every image: check them.
        if macenko:
            params = np.concatenate([self.fitted.HERef.ravel(), self.fitted.maxCRef])
            if self.fitted.HERef.shape != (3, 2) or self.fitted.maxCRef.shape != (2,):
                raise unusable(f"stain vectors of shape {self.fitted.HERef.shape}, not (3, 2)")
            if not np.isfinite(params).all() or (self.fitted.maxCRef <= 0).any():
                raise unusable(f"degenerate stain estimate (maxC {self.fitted.maxCRef})")
            hematoxylin, eosin = self.fitted.HERef.T
            # Parallel vectors mean one colour only (e.g. a flat patch): unmixing onto them is meaningless.
            cosine = abs(hematoxylin @ eosin) / (np.linalg.norm(hematoxylin) * np.linalg.norm(eosin))
            if cosine > 0.99:
                raise unusable(f"its two stain vectors are nearly parallel (cosine {cosine:.3f})")
        elif not np.isfinite(self.fitted.target_stds).all() or (self.fitted.target_stds <= 1e-6).any():
            raise unusable(f"a flat colour channel (LAB standard deviations {self.fitted.target_stds})")

    def card(self) -> dict:
        """The step as a model card records it: method, options and the fitted reference's numbers (exact:
        JSON keeps every float), enough to rebuild this normalizer without the dataset (`from_card`)."""
        return {"step": CARD_STEP, "method": self.method, "library": f"torchstain {torchstain.__version__}",
                "options": dict(self._options), "min_tissue_fraction": self.min_tissue_fraction,
                "fitted": {name: np.asarray(getattr(self.fitted, name)).tolist() for name in FITTED[self.method]}}

    @classmethod
    def from_card(cls, step: dict) -> StainNormalizer:
        """The normalizer a card's step describes; ValueError when the step is not one this code can rebuild."""
        method = step.get("method")
        if method not in METHODS:
            raise ValueError(f"unknown stain normalization method {method!r}; expected one of {METHODS}")
        options = {"Io": IO, "alpha": ALPHA, "beta": BETA} if method == "macenko" else {}
        if step.get("options", options) != options:
            raise ValueError(f"stain normalization options {step.get('options')} differ from this code's {options}")
        return cls(method, min_tissue_fraction=float(step.get("min_tissue_fraction", 0.01)),
                   fitted=step.get("fitted") or {})

    def apply(self, image: np.ndarray) -> np.ndarray:
        """The normalized pixels (the original ones where the method falls back): what training saw."""
        return self.normalize(image).image

    def normalize(self, image: np.ndarray) -> StainResult:
        """`image` mapped onto the reference's colours; never raises, falls back to `image` itself."""
        if problem := _shape_problem(image):
            return StainResult(image, False, problem)
        if (fraction := tissue_fraction(image)) < self.min_tissue_fraction:
            return StainResult(image, False, f"too little tissue ({fraction:.2%} of pixels, "
                                             f"minimum {self.min_tissue_fraction:.2%})")
        if problem := _content_problem(image):
            return StainResult(image, False, problem)
        try:
            with np.errstate(**_FP_ERRORS):
                if self.method == "macenko":
                    out = self.fitted.normalize(image, stains=False, **self._options)[0]
                else:
                    out = self.fitted.normalize(image)
                out = _as_uint8(out, image.shape)
        except Exception as exc:
            return StainResult(image, False, f"{self.method} failed: {type(exc).__name__}: {exc}")
        if _spread(out) < FLAT_SPREAD:
            return StainResult(image, False, f"{self.method} made it one flat colour: kept as it was")
        return StainResult(out, True, None)


def _write_png(image: np.ndarray, target: Path) -> None:
    """Written aside, then renamed into place: no half-written PNG remains."""
    with fileio.atomic_path(target) as tmp, open(tmp, "wb") as handle:
        Image.fromarray(image).save(handle, format="PNG")


def _normalize_file(source: Path, target: Path, normalizer: StainNormalizer) -> dict:
    try:
        with Image.open(io.BytesIO(inputs.read_regular(source))) as opened:
            pixels = np.asarray(to_rgb(opened))  # the decoding prediction uses too
    # PIL reports broken files with many exception types (OSError, SyntaxError, struct.error, ...).
    except Exception as exc:
        return {"source": str(source), "target": "", "normalized": False,
                "reason": f"unreadable source: {type(exc).__name__}: {exc}"}
    result = normalizer.normalize(pixels)
    _write_png(result.image, target)
    return {"source": str(source), "target": str(target), "normalized": result.normalized,
            "reason": result.reason or ""}


def normalize_files(pairs: list[tuple[Path, Path]], normalizer: StainNormalizer, *, workers: int = 2,
                    progress: bool = True) -> list[dict]:
    """Normalize each (source image, destination PNG) pair and return one row per pair, in input order.

    Every readable source gets a PNG at its destination: the normalized image, or the original when
    normalization fell back (its row says why). An unreadable source gets no file and target "". Errors
    writing a destination (disk full, permissions) are not the image's fault and propagate.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        rows = pool.map(lambda pair: _normalize_file(Path(pair[0]), Path(pair[1]), normalizer), pairs)
        return list(tqdm(rows, total=len(pairs), desc=f"stain ({normalizer.method})", unit="image",
                         disable=None if progress else True))
