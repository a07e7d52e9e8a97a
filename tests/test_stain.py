"""Stain normalization on small synthetic H&E images: success, every fallback, and the file writer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import EOSIN, HEMATOXYLIN, he_image
from PIL import Image

from tlrepro.data.stain import StainNormalizer, StainResult, normalize_files, tissue_fraction

REFERENCE = he_image(1)
# Another slide: bluer hematoxylin, redder eosin, stained 1.6 times as strongly.
SOURCE = he_image(2, HEMATOXYLIN * [1.0, 0.6, 1.4], EOSIN * [1.3, 0.8, 1.0], intensity=1.6)


def blank(fill: int, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).integers(-2, 3, (64, 64, 3))
    return np.clip(fill + noise, 0, 255).astype(np.uint8)


def mean_colour_distance(image: np.ndarray) -> float:
    return float(np.linalg.norm(image.reshape(-1, 3).mean(0) - REFERENCE.reshape(-1, 3).mean(0)))


@pytest.fixture(params=["macenko", "reinhard"])
def normalizer(request: pytest.FixtureRequest) -> StainNormalizer:
    return StainNormalizer(request.param, REFERENCE)


def test_tissue_images_move_towards_the_reference_colours(normalizer: StainNormalizer) -> None:
    result = normalizer.normalize(SOURCE)
    assert result.normalized and result.reason is None
    assert result.image.shape == SOURCE.shape and result.image.dtype == np.uint8
    # Macenko matches stain vectors and concentration percentiles, not means, so it only gets part way.
    assert mean_colour_distance(result.image) < 0.6 * mean_colour_distance(SOURCE)


@pytest.mark.parametrize("fill", [255, 240])
def test_an_almost_blank_image_is_returned_unchanged(normalizer: StainNormalizer, fill: int) -> None:
    image = blank(fill)
    assert tissue_fraction(image) == 0
    result = normalizer.normalize(image)
    assert not result.normalized and "tissue" in result.reason
    assert np.array_equal(result.image, image)


def test_an_exception_inside_torchstain_falls_back(normalizer: StainNormalizer,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(*args: object, **kwargs: object) -> None:
        raise np.linalg.LinAlgError("Eigenvalues did not converge")

    monkeypatch.setattr(normalizer.fitted, "normalize", explode)
    result = normalizer.normalize(SOURCE)
    assert not result.normalized and "Eigenvalues did not converge" in result.reason
    assert result.image is SOURCE


@pytest.mark.parametrize("output, words", [(np.full((64, 64, 3), np.nan), "non-finite"),
                                           (np.full((64, 64, 3), 300.0), "out of range"),
                                           (np.zeros((32, 32, 3), np.uint8), "shape")])
def test_unusable_output_falls_back(monkeypatch: pytest.MonkeyPatch, output: np.ndarray, words: str) -> None:
    normalizer = StainNormalizer("reinhard", REFERENCE)
    monkeypatch.setattr(normalizer.fitted, "normalize", lambda image: output)
    result = normalizer.normalize(SOURCE)
    assert not result.normalized and words in result.reason and result.image is SOURCE


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_a_flat_tissue_colour_falls_back_as_blank(method: str) -> None:
    # Reinhard would divide by each channel's spread (0/0, cast to black); Macenko paints it one reference colour.
    flat = np.full((64, 64, 3), (150, 60, 160), np.uint8)
    result = StainNormalizer(method, REFERENCE).normalize(flat)
    assert not result.normalized and result.reason.startswith("blank image") and result.image is flat


def test_a_result_that_came_out_flat_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    normalizer = StainNormalizer("reinhard", REFERENCE)
    monkeypatch.setattr(normalizer.fitted, "normalize", lambda image: np.full_like(image, 90))
    result = normalizer.normalize(SOURCE)
    assert not result.normalized and "made it one flat colour" in result.reason and result.image is SOURCE


@pytest.mark.parametrize("image, words", [(SOURCE[..., 0], "grayscale"), (SOURCE[..., :2], "HxWx3"),
                                          (SOURCE.astype(np.float32), "uint8")])
def test_wrong_inputs_are_returned_unchanged(normalizer: StainNormalizer, image: np.ndarray,
                                            words: str) -> None:
    result = normalizer.normalize(image)
    assert isinstance(result, StainResult)
    assert not result.normalized and words in result.reason and result.image is image


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
@pytest.mark.parametrize("reference", [blank(255), blank(240), REFERENCE[..., 0]])
def test_an_unusable_reference_raises(method: str, reference: np.ndarray) -> None:
    with pytest.raises(ValueError, match="reference image is unusable"):
        StainNormalizer(method, reference)


@pytest.mark.parametrize("method, words", [("macenko", "parallel"), ("reinhard", "flat colour")])
def test_a_single_colour_reference_raises_even_without_a_tissue_minimum(method: str, words: str) -> None:
    flat = np.full((64, 64, 3), (150, 60, 160), np.uint8)
    with pytest.raises(ValueError, match=words):
        StainNormalizer(method, flat, min_tissue_fraction=0)


def test_an_unknown_method_raises() -> None:
    with pytest.raises(ValueError, match="unknown stain normalization method"):
        StainNormalizer("vahadane", REFERENCE)


def test_normalize_files_writes_pngs_in_order(tmp_path: Path) -> None:
    sources = tmp_path / "in"
    sources.mkdir()
    Image.fromarray(SOURCE).save(sources / "tissue.png")
    Image.fromarray(he_image(3)).save(sources / "tissue.jpg", quality=95)
    Image.fromarray(blank(240)).save(sources / "blank.png")
    (sources / "garbage.png").write_bytes(b"not a png at all")
    names = ["tissue.png", "garbage.png", "tissue.jpg", "blank.png"]
    pairs = [(sources / name, tmp_path / "out" / "deep" / f"{Path(name).stem}-{i}.png")
             for i, name in enumerate(names)]

    rows = normalize_files(pairs, StainNormalizer("macenko", REFERENCE), workers=2, progress=True)

    assert [row["source"] for row in rows] == [str(source) for source, _ in pairs]
    assert [row["normalized"] for row in rows] == [True, False, True, False]
    assert rows[0]["reason"] == "" and "unreadable" in rows[1]["reason"] and "tissue" in rows[3]["reason"]
    assert rows[1]["target"] == "" and not pairs[1][1].exists()
    for row, (_, target) in zip([rows[0], rows[2], rows[3]], [pairs[0], pairs[2], pairs[3]], strict=True):
        assert row["target"] == str(target)
        with Image.open(target) as written:
            assert written.format == "PNG" and written.mode == "RGB" and written.size == (64, 64)
    with Image.open(pairs[3][1]) as written:  # a fallback keeps the original pixels, losslessly
        assert np.array_equal(np.asarray(written), blank(240))
    assert not [path for path in tmp_path.rglob("*") if path.name.endswith(".tmp")]


def test_an_interrupted_write_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source, target = tmp_path / "tissue.png", tmp_path / "out" / "tissue.png"
    Image.fromarray(SOURCE).save(source)

    def half_write(self: Image.Image, handle: object, *args: object, **kwargs: object) -> None:
        handle.write(b"\x89PNG half")
        raise OSError("No space left on device")

    monkeypatch.setattr(Image.Image, "save", half_write)
    with pytest.raises(OSError, match="No space left"):
        normalize_files([(source, target)], StainNormalizer("reinhard", REFERENCE), progress=False)
    assert list(target.parent.iterdir()) == []


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_a_fitted_normalizer_is_rebuilt_from_its_card_without_the_reference(method: str) -> None:
    """A model card records the fitted reference's numbers; through JSON they rebuild the very same step."""
    fitted = StainNormalizer(method, REFERENCE)
    card = json.loads(json.dumps(fitted.card()))
    assert card["step"] == "stain_normalization" and card["method"] == method and card["library"].startswith("torchstain")
    rebuilt = StainNormalizer.from_card(card)
    assert np.array_equal(rebuilt.apply(SOURCE), fitted.normalize(SOURCE).image)
    assert not np.array_equal(rebuilt.apply(SOURCE), SOURCE)


@pytest.mark.parametrize("change, words", [
    (lambda c: c["fitted"].pop(next(iter(c["fitted"]))), "lack or garble"),
    (lambda c: c.update(method="vahadane"), "unknown stain normalization method"),
    (lambda c: c["options"].update(Io=255), "options"),
    (lambda c: c["fitted"].update(HERef=[[0.5, 0.5], [0.5, 0.5], [0.7, 0.7]]), "parallel"),
])
def test_a_card_step_that_cannot_be_rebuilt_is_refused(change, words: str) -> None:
    card = StainNormalizer("macenko", REFERENCE).card()
    change(card)
    with pytest.raises(ValueError, match=words):
        StainNormalizer.from_card(card)
