"""The single place that opens image files.

`inspect_image` reads each file's bytes once and decodes them once, deriving everything the index needs
from that one decode: content hash, size, mode, and the perceptual hashes of the image's eight dihedral
forms (rotations and flips), so the leakage audit can find an image and its rotated copy on two sides.
Archives are messy, so it never raises on a bad file: it returns the reason the file is rejected.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.fft
from PIL import Image

from tlrepro.core import inputs
from tlrepro.core.errors import UserError

# Formats prepare accepts (by extension, then by what the bytes really are) and the ones it names when rejecting.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff"})
DECODED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "BMP", "TIFF"})
UNSUPPORTED_EXTENSIONS = frozenset({".webp", ".heic", ".heif", ".avif", ".jp2", ".j2k", ".jxl", ".svg", ".ico",
                                    ".psd", ".dcm", ".dng", ".cr2", ".nef", ".raw", ".exr", ".pgm", ".ppm"})
# Decompression-bomb guard: far above any dataset image (BreakHis is 700x460), far below what exhausts memory.
MAX_PIXELS = 64_000_000

# The eight dihedral forms of an image (HxW[xC] arrays); `views` in params name the seven non-identity ones.
VIEWS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda a: a,
    "rot90": lambda a: np.rot90(a, 1),
    "rot180": lambda a: np.rot90(a, 2),
    "rot270": lambda a: np.rot90(a, 3),
    "flip_h": lambda a: a[:, ::-1],
    "flip_v": lambda a: a[::-1],
    "transpose": lambda a: np.swapaxes(a, 0, 1),
    "transverse": lambda a: np.rot90(a, 2).swapaxes(0, 1),
}


@dataclass(frozen=True)
class ImageInfo:
    sha256: str  # of the file's bytes: byte-identical copies share it
    width: int
    height: int
    mode: str  # PIL mode as stored (L, RGB, RGBA, P, CMYK, I;16, ...)
    phash: str  # 64-bit perceptual hash as 16 hex digits: near-identical images are a few bits apart
    dihedral_phashes: str  # the phash of each form in VIEWS order, space-separated


def is_image_file(path: Path | str) -> bool:
    """Whether a file's extension (any case) is one of the image types prepare accepts."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def phash_hex(gray32: np.ndarray) -> str:
    """imagehash.phash's algorithm on an already resized 32x32 grayscale array, as 16 hex digits."""
    dct = scipy.fft.dct(scipy.fft.dct(np.asarray(gray32, dtype=float), axis=0, norm=None), axis=1, norm=None)
    low = dct[:8, :8]
    bits = (low > np.median(low)).ravel()
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


def dihedral_phashes(rgb: Image.Image) -> list[str]:
    """Perceptual hashes of the image's eight dihedral forms (VIEWS order), from one 32x32 thumbnail."""
    gray = np.asarray(rgb.convert("L").resize((32, 32), Image.Resampling.LANCZOS))
    return [phash_hex(view(gray)) for view in VIEWS.values()]


def phash_of(rgb: Image.Image) -> str:
    """The image's own perceptual hash (imagehash.phash)."""
    return phash_hex(np.asarray(rgb.convert("L").resize((32, 32), Image.Resampling.LANCZOS)))


def inspect_image(path: Path | str) -> ImageInfo | str:
    """The image's facts, or a one-line reason why it cannot be used (empty, truncated, not an image...)."""
    try:
        data = inputs.read_regular(path)  # never waits on a FIFO swapped in since the folder was scanned
    except OSError as exc:
        return f"unreadable file: {exc.strerror or exc}"
    return inspect_bytes(data)


def inspect_bytes(data: bytes, *, dihedral: bool = True, max_pixels: int = MAX_PIXELS) -> ImageInfo | str:
    """As inspect_image, for bytes in memory; without `dihedral` only the image's own phash is computed
    (prediction needs no rotated forms), and `dihedral_phashes` holds just that one."""
    decoded = _decode(data, dihedral, max_pixels)
    return decoded if isinstance(decoded, str) else decoded[0]


def _decode(data: bytes, dihedral: bool, max_pixels: int) -> tuple[ImageInfo, Image.Image] | str:
    """(facts, 8-bit RGB image) from one decode of the bytes, or the reason they cannot be used. The pixel
    count is checked on the header, before any pixel is decoded (a decompression bomb is refused there)."""
    if not data:
        return "empty file (0 bytes)"
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format not in DECODED_FORMATS:
                return f"unsupported image format {image.format}: convert it to PNG or JPEG"
            if image.width * image.height > max_pixels:
                return f"too large ({image.width}x{image.height} pixels, limit {max_pixels:,})"
            image.load()  # decodes every pixel: this is what catches truncated files
            rgb = to_rgb(image)
            hashes = dihedral_phashes(rgb) if dihedral else [phash_of(rgb)]
            return ImageInfo(sha256=hashlib.sha256(data).hexdigest(), width=image.width, height=image.height,
                             mode=image.mode, phash=hashes[0], dihedral_phashes=" ".join(hashes)), rgb
    except Image.UnidentifiedImageError:
        return "not an image (no known image format in its bytes)"
    except Image.DecompressionBombError as exc:
        return f"too large: {exc}"
    except Exception as exc:  # PIL raises many types on bad data; one bad file must not stop the run
        return f"cannot decode: {' '.join(str(exc).split()) or type(exc).__name__}"


def decode_rgb(data: bytes, what: str = "image") -> Image.Image:
    """8-bit RGB from encoded bytes, or a UserError saying why not (for predict and serve)."""
    decoded = _decode(data, False, MAX_PIXELS)
    if isinstance(decoded, str):
        raise UserError(f"{what}: {decoded}")
    return decoded[1]


def decode_image(data: bytes, size: int, prepare: Callable[[np.ndarray], np.ndarray] | None = None,
                 max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, np.ndarray, bool, bytes]:
    """(uint8 image resized for the model, perceptual hashes, ok, reason) from encoded bytes; never raises.

    The bytes are decoded once: the hashes and the model's input come from the same pixels. `prepare` is what
    the model's card says to do to the full-size RGB pixels before resizing (e.g. stain normalization): its
    training images went through it. The hashes (int64 view of 16 uint64) are the eight dihedral forms' (VIEWS
    order) of the image as sent, then of the image as prepared (the same again without `prepare`), so a query
    can be matched, rotated or flipped, against raw and prepared training images.

    The one decoding path of prediction: `tlrepro predict`, Grad-CAM and the REST service all use it."""
    decoded = _decode(data, True, max_pixels)
    if isinstance(decoded, str):
        return np.zeros((size, size, 3), np.uint8), np.zeros(2 * len(VIEWS), np.int64), False, decoded.encode()
    facts, rgb = decoded
    forms = facts.dihedral_phashes.split(" ")
    if prepare is not None:
        rgb = Image.fromarray(prepare(np.asarray(rgb)))
        forms += dihedral_phashes(rgb)
    else:
        forms += forms
    return resized_array(rgb, size), np.array([int(h, 16) for h in forms], np.uint64).view(np.int64), True, b""


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


def resized_array(image: Image.Image, size: int, view: str = "identity") -> np.ndarray:
    """uint8 RGB array of size x size (bilinear), in the given dihedral view: what every model is fed."""
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.ascontiguousarray(VIEWS[view](np.asarray(image, dtype=np.uint8)))
