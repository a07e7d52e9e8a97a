"""Grad-CAM (tlrepro.modeling.explain): heatmaps shaped like the image and scaled to their peak, a
model whose decision depends on one colour puts its heatmap where that colour is, overlays are RGB images of
the image's size, and write_overlays writes one PNG per image atomically (no temporary files left)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from conftest import red_detector
from PIL import Image

from tlrepro.core.config import RowSettings, resolve_row
from tlrepro.data.labels import BINARY_CLASSES
from tlrepro.modeling import models
from tlrepro.modeling.explain import gradcam, last_conv_layer, overlay, overlay_png, write_overlays
from tlrepro.modeling.predict import Predictor, predict_folder

SIZE = 32
SE = {"reduction": 16, "dense_layers": True, "transitions": True}


def tiny_classifier(backbone: str, se: dict | None = None) -> models.Classifier:
    settings = {"backbone": backbone, "weights": "random", "image_size": SIZE, "batch_size": 4,
                "learning_rate": 1e-3, "epochs": 1, "head": [{"pool": "avg"}, {"dense": 1, "activation": "sigmoid"}]}
    row = resolve_row("tiny", RowSettings(), RowSettings(**settings, **({"se": se} if se else {})))
    return models.build_classifier(row, classes=BINARY_CLASSES, seed=0)


def patches(red_at: tuple[int, int], green_at: tuple[int, int]) -> np.ndarray:
    """A dark 32x32 image with an 8x8 red square and an 8x8 green square at the given corners."""
    image = np.full((SIZE, SIZE, 3), 20, dtype=np.uint8)
    (ry, rx), (gy, gx) = red_at, green_at
    image[ry : ry + 8, rx : rx + 8] = (230, 20, 20)
    image[gy : gy + 8, gx : gx + 8] = (20, 230, 20)
    return image


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.random((3, SIZE, SIZE, 3)) * 255).astype("float32")


@pytest.mark.parametrize(("backbone", "se"), [("MobileNetV2", None), ("TinyCNN", None), ("TinyDenseNet", SE)],
                         ids=["MobileNetV2", "TinyCNN", "TinyDenseNet-SE"])
def test_heatmaps_have_the_image_shape_and_are_scaled_to_their_peak(backbone, se, images):
    """Each map is the image's size and divided by its own peak before being resized to the image: its maximum is
    near 1 (the resize smooths the peak a little) and few of its pixels sit at 1, where the map had evidence at
    all (else it is all zero). Unscaled, the final clip would flatten large maps to 1 or leave small ones low."""
    clf = tiny_classifier(backbone, se)
    grid = last_conv_layer(clf.backbone).output.shape
    assert len(grid) == 4
    for class_index in (None, 0, 1):
        heat = gradcam(clf.model, images, class_index)
        assert heat.shape == images.shape[:3] and heat.dtype == np.float32 and np.isfinite(heat).all()
        peaks, saturated = heat.max(axis=(1, 2)), (heat >= 0.999).mean(axis=(1, 2))
        if grid[1] == 1:  # a 1x1 map (MobileNetV2, TinyDenseNet at 32 px): one value, 1 or 0, over the image
            assert set(np.unique(heat)) <= {0.0, 1.0}
        else:
            assert np.all(((peaks > 0.9) & (saturated < 0.1)) | (peaks == 0.0)), (peaks, saturated)
    if backbone == "TinyCNN":  # an earlier block (16x16 at 32 px) gives a map that varies over the image
        heat = gradcam(clf.model, images, 1, layer="block1_relu")
        assert heat.shape == images.shape[:3] and all(h.std() > 0 for h in heat)
    if se:
        assert any("se" in layer.name for layer in clf.backbone.layers)


def test_the_heatmap_is_where_the_deciding_signal_is():
    model = red_detector()
    first, second = patches((0, 0), (24, 24)), patches((24, 24), (0, 0))
    heat = gradcam(model, np.stack([first, second]).astype("float32"))
    assert heat.shape == (2, SIZE, SIZE) and heat.std(axis=(1, 2)).min() > 0.1
    for h, (ry, rx), (gy, gx) in ((heat[0], (0, 0), (24, 24)), (heat[1], (24, 24), (0, 0))):
        red, green = h[ry : ry + 8, rx : rx + 8].mean(), h[gy : gy + 8, gx : gx + 8].mean()
        assert red > 0.6 and green < 0.1, (red, green)
        assert np.unravel_index(h.argmax(), h.shape)[0] in range(ry, ry + 8)
    assert not np.allclose(heat[0], heat[1])  # the map moves with the signal
    # The model always says malignant (P >= 0.5); explaining "benign" finds no evidence for it anywhere.
    assert float(model(first[None].astype("float32"))[0, 0]) >= 0.5
    np.testing.assert_array_equal(gradcam(model, first[None].astype("float32"), class_index=0), 0.0)


def test_overlays_are_rgb_images_of_the_image_size():
    rgb = (np.random.default_rng(1).random((40, 50, 3)) * 255).astype(np.uint8)
    heat = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    out = overlay(rgb, heat)
    assert out.shape == (40, 50, 3) and out.dtype == np.uint8
    assert not np.array_equal(out, rgb)
    np.testing.assert_array_equal(overlay(rgb, heat, alpha=0.0), rgb)
    png = Image.open(io.BytesIO(overlay_png(rgb, heat, colormap="turbo")))
    assert png.format == "PNG" and png.mode == "RGB" and png.size == (50, 40)
    with pytest.raises(ValueError, match="alpha"):
        overlay(rgb, heat, alpha=2.0)


@pytest.fixture(scope="module")
def saved_detector(saved_models) -> Path:
    """red_detector() saved with its card (the shared saved models of tests/conftest.py)."""
    return saved_models / "demo" / "red.keras"


def test_write_overlays_writes_one_png_per_image_and_no_temporary_files(saved_detector, tmp_path):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(patches((0, 0), (24, 24))).save(folder / "a.png")
    Image.fromarray(patches((24, 24), (0, 0))).save(folder / "b.jpg", quality=95)
    Image.fromarray(patches((8, 8), (16, 16))).resize((48, 48)).save(folder / "sub" / "a.jpg")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    predictor = Predictor.load(saved_detector)
    out = tmp_path / "overlays"
    written = write_overlays(predictor, [folder / "a.png", folder / "b.jpg", folder / "sub" / "a.jpg",
                                         folder / "broken.png"], out)
    assert [p.name for p in written] == ["a_gradcam.png", "b_gradcam.png", "a_jpg_gradcam.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written)  # no temp files
    for path in written:
        image = Image.open(path)
        assert image.format == "PNG" and image.mode == "RGB" and image.size == (SIZE, SIZE)
    hot = np.asarray(Image.open(out / "a_gradcam.png")).astype(int)
    assert hot[:8, :8, 0].mean() > hot[24:, 24:, 0].mean()  # jet red over the red patch


def test_predict_explain_writes_overlays_beside_the_table(saved_detector, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(patches((8 * i, 0), (24, 24))).save(folder / f"img{i}.png")
    _, table, _ = predict_folder(saved_detector, folder, out=tmp_path / "pred.csv", progress=False, explain=True)
    assert len(table) == 3
    assert sorted(p.name for p in (tmp_path / "pred_gradcam").iterdir()) == [f"img{i}_gradcam.png" for i in range(3)]
