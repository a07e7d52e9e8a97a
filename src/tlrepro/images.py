"""The single place that opens image files.

`inspect_image` reads each file's bytes once and decodes them once, deriving everything the index needs
(content hash, size, mode, perceptual hash) from that one decode, so `prepare` stays fast on big datasets.
Archives are messy, so it never raises on a bad file: it returns the reason the file is rejected.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

from tlrepro.errors import UserError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff"})


@dataclass(frozen=True)
class ImageInfo:
    sha256: str  # of the file's bytes: byte-identical copies share it
    width: int
    height: int
    mode: str  # PIL mode as stored (L, RGB, RGBA, P, CMYK, I;16, ...)
    phash: str  # 64-bit perceptual hash as 16 hex digits: near-identical images are a few bits apart


def is_image_file(path: Path | str) -> bool:
    """Whether a file's extension (any case) is one of the image types the datasets use."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def inspect_image(path: Path | str) -> ImageInfo | str:
    """The image's facts, or a one-line reason why it cannot be used (empty, truncated, not an image...)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return f"unreadable file: {exc.strerror or exc}"
    if not data:
        return "empty file (0 bytes)"
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decodes every pixel: this is what catches truncated files
            rgb = to_rgb(image)
            return ImageInfo(
                sha256=hashlib.sha256(data).hexdigest(),
                width=image.width,
                height=image.height,
                mode=image.mode,
                phash=str(imagehash.phash(rgb)),
            )
    except Image.UnidentifiedImageError:
        return "not an image (no known image format in its bytes)"
    except Exception as exc:  # PIL raises many types on bad data; one bad file must not stop the run
        return f"cannot decode: {' '.join(str(exc).split()) or type(exc).__name__}"


def load_rgb(path: Path | str) -> Image.Image:
    """The image as 8-bit RGB, for code that needs pixels (training, figures)."""
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image)
    except Exception as exc:
        raise UserError(
            f"Cannot read image {path}: {exc}. Re-run `dvc repro prepare@<dataset>` to re-validate the data."
        ) from None


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any mode: 16/32-bit scaled (not clipped) to 8 bits, transparency flattened on white."""
    if image.mode.startswith("I") or image.mode == "F":
        image = _to_8bit_gray(image)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _to_8bit_gray(image: Image.Image) -> Image.Image:
    """Integer modes hold 16-bit samples (PNG, TIFF): map 0..65535 onto 0..255; float images by their range.

    PIL's own convert('L') clips at 255, which would turn most 16-bit images white.
    """
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low or 1.0) * 255.0
    else:
        scaled = np.clip(values, 0, 65535) / 257.0
    return Image.fromarray(np.round(scaled).astype(np.uint8))
