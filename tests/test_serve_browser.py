"""The web page in headless Chromium (Playwright's sync API, Debian's /usr/bin/chromium; nothing downloaded):
with the keyboard alone, pick a model, open the file chooser from the drop zone and choose an image; the
label, the probability bars, the Grad-CAM overlay, the seen-in-training notice and the model card appear,
results are announced (aria-live), and an API error shows in the page. A screenshot is saved to
$TLREPRO_SCREENSHOT_DIR (else the test's tmp dir) and its path printed."""

from __future__ import annotations

import os
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers
from PIL import Image

from tlrepro.core.config import Serve
from tlrepro.data.images import inspect_image
from tlrepro.data.labels import BINARY_CLASSES
from tlrepro.modeling import cards, models

CHROMIUM = os.environ.get("TLREPRO_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SIZE = 32

if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
    pytest.skip(f"no Chromium at {CHROMIUM} (install Debian's chromium, or set TLREPRO_CHROMIUM)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
uvicorn = pytest.importorskip("uvicorn")


def red_detector() -> keras.Model:
    """preprocessing -> backbone (8x8 maps of redness and greenness) -> head: red for malignant, green against."""
    image = keras.Input((SIZE, SIZE, 3), name="image")
    inner = keras.Input((SIZE, SIZE, 3))
    channels = layers.Conv2D(2, 1, activation="relu", name="colours")
    backbone = keras.Model(inner, layers.AveragePooling2D(4)(channels(inner)), name="colournet")
    head = keras.Sequential([layers.GlobalAveragePooling2D(), layers.Dense(1, activation="sigmoid")], name="head")
    model = keras.Model(image, head(backbone(models.ImageNetPreprocessing("unit", name="preprocessing")(image))))
    redness = np.array([[[[1.0, -1.0], [-1.0, 1.0], [0.0, 0.0]]]], "float32")  # relu(R - G), relu(G - R)
    channels.set_weights([redness, np.zeros(2, "float32")])
    head.layers[-1].set_weights([np.array([[6.0], [-2.0]], "float32"), np.zeros(1, "float32")])
    return model


def lesion(path: Path) -> Path:
    """A skin-like picture: beige ground, a red blotch off-centre, a green mark elsewhere (256 px JPEG)."""
    yy, xx = np.mgrid[0:256, 0:256]
    image = np.empty((256, 256, 3), np.float32)
    image[...] = (214, 178, 150)
    blotch = np.exp(-(((yy - 90) ** 2 + (xx - 160) ** 2) / (2 * 28.0**2)))[..., None]
    image = image * (1 - blotch) + np.array([185, 40, 45]) * blotch
    mark = np.exp(-(((yy - 190) ** 2 + (xx - 70) ** 2) / (2 * 14.0**2)))[..., None]
    image = image * (1 - mark) + np.array([60, 140, 70]) * mark
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=92)
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    upload = lesion(root / "lesion.jpg")
    (root / "notes.txt").write_text("this is not an image\n")
    base, reports = root / "models", root / "reports"
    reports.mkdir()
    (reports / "demo.html").write_text("<!doctype html><title>demo report</title><h1>demo report</h1>")
    model = red_detector()
    common = {"classes": list(BINARY_CLASSES), "image_size": SIZE, "threshold": 0.5, "backbone": "colournet",
              "weights": {"source": "random"}, "phash_max_distance": 4}
    cards.save(model, base / "demo" / "baseline.keras", {
        **common, "name": "demo/baseline", "study": "demo", "row": "baseline", "report": "reports/demo.html",
        "metrics": {"side": "test", "accuracy": 0.71, "accuracy_ci_low": 0.66, "accuracy_ci_high": 0.76, "f1": 0.7,
                    "roc_auc": 0.78, "n": 300}, "training_phashes": []})
    cards.save(model, base / "demo" / "red-detector.keras", {  # trained (so to speak) on the upload itself
        **common, "name": "demo/red-detector", "study": "demo", "row": "red-detector", "report": "reports/demo.html",
        "metrics": {"side": "test", "accuracy": 0.842, "accuracy_ci_low": 0.813, "accuracy_ci_high": 0.868,
                    "f1": 0.835, "roc_auc": 0.911, "n": 660},
        "training_phashes": [inspect_image(upload).phash]})

    from tlrepro.serve.app import create_app

    app = create_app(base, default="demo/baseline", reports_dir=reports,
                     params=Serve(max_upload_mb=5, max_batch=4, max_wait_ms=5))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    yield {"url": f"http://127.0.0.1:{port}", "upload": upload, "text": root / "notes.txt"}
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def page(tmp_path):
    profile = tmp_path / "chromium-profile"
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": 1280, "height": 900}, device_scale_factor=1)
        choosers: list = []  # listening from the start keeps file-chooser interception on
        context.add_init_script("window.keys = []; document.addEventListener('keydown', "
                                "e => window.keys.push(e.key + '@' + (e.target.id || e.target.tagName)), true);")
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.on("filechooser", lambda chooser: choosers.append(chooser))
            page.choosers = choosers
            yield page
        finally:
            context.close()
    shutil.rmtree(profile, ignore_errors=True)


def choose_file(page, key: str, path: Path) -> None:
    """Press `key` on the focused drop zone and answer the file chooser it opens with `path`."""
    choosers = page.choosers
    choosers.clear()
    page.keyboard.press(key)
    deadline = time.monotonic() + 30
    while not choosers:
        if time.monotonic() > deadline:
            state = page.evaluate("[document.activeElement && document.activeElement.id, window.keys]")
            pytest.fail(f"pressing {key!r} opened no file chooser (focus, keys seen: {state})")
        page.wait_for_timeout(50)
    choosers[0].set_files(str(path))


def focused_id(page) -> str:
    return page.evaluate("document.activeElement && document.activeElement.id")


def test_the_page_classifies_an_image_with_the_keyboard_alone(site, page, tmp_path):
    page.set_default_timeout(60_000)
    page.goto(site["url"] + "/")
    sync_api.expect(page.locator("#model")).to_be_enabled()
    assert page.locator("#model option").count() == 2
    sync_api.expect(page.locator("#card-fields")).to_contain_text("71.0% (95% CI 66.0%–76.0%)")

    page.keyboard.press("Tab")  # the skip link comes first
    assert page.evaluate("document.activeElement.className") == "skip"
    page.keyboard.press("Tab")
    assert focused_id(page) == "model"
    page.keyboard.press("ArrowDown")  # a closed <select> takes arrow keys
    assert page.locator("#model").input_value() == "demo/red-detector"
    sync_api.expect(page.locator("#card-fields")).to_contain_text("84.2% (95% CI 81.3%–86.8%)")
    sync_api.expect(page.locator("#card-report a")).to_have_attribute("href", "/reports/demo.html")

    page.keyboard.press("Tab")
    assert focused_id(page) == "drop"
    ring = page.evaluate("(() => { const s = getComputedStyle(document.activeElement);"
                         " return [s.outlineStyle, s.outlineWidth]; })()")
    assert ring[0] != "none" and ring[1] != "0px", ring  # a visible focus ring
    choose_file(page, "Enter", site["upload"])

    sync_api.expect(page.locator("#label")).to_have_text("malignant")
    sync_api.expect(page.locator("#status")).to_contain_text("Predicted malignant")
    assert page.locator("#status").get_attribute("aria-live") == "polite"
    sync_api.expect(page.locator("#seen")).to_be_visible()
    assert page.locator("#bars li").count() == 2
    sync_api.expect(page.locator("#overlay")).to_have_attribute("src", re.compile(r"^data:image/png;base64,"))
    page.wait_for_function("document.getElementById('overlay').naturalWidth > 0"
                           " && document.getElementById('preview').naturalWidth > 0")
    assert page.locator("#error").is_hidden()

    out_dir = Path(os.environ.get("TLREPRO_SCREENSHOT_DIR") or tmp_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    shot = out_dir / "serve_page.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 10_000

    # An API error shows in the page (Space opens the chooser too), and the next image works again.
    page.locator("#drop").focus()
    choose_file(page, " ", site["text"])
    sync_api.expect(page.locator("#error")).to_be_visible()
    sync_api.expect(page.locator("#error")).to_contain_text("not an image")
    page.screenshot(path=str(out_dir / "serve_page_error.png"), full_page=True)
    print(f"screenshot: {out_dir / 'serve_page_error.png'}")
    choose_file(page, "Enter", site["upload"])
    sync_api.expect(page.locator("#error")).to_be_hidden()
    sync_api.expect(page.locator("#label")).to_have_text("malignant")
