"""params.yaml against its schema: the real file validates; typos, wrong types and out-of-range values fail
with one line naming the setting (and the close match for a typo); rows inherit their study's defaults."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from tlrepro.core import config
from tlrepro.core.errors import UserError

REPO = Path(__file__).resolve().parents[1]
BASE = yaml.safe_load((REPO / "params.yaml").read_text())


def load_with(tmp_path: Path, mutate) -> config.Params:
    params = copy.deepcopy(BASE)
    mutate(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return config.load_params(path)


def test_the_real_params_validate_and_rows_inherit_defaults():
    params = config.load_params(REPO / "params.yaml")
    assert list(params.studies) == ["lin2024", "mobilenet2025", "sarker2025", "kumar2022", "wang2024"]
    finetune = params.study("mobilenet2025").row("finetune")
    assert (finetune.backbone, finetune.batch_size, finetune.start_from, finetune.learning_rate) == (
        "MobileNetV2", 16, "frozen", 1e-5)
    assert finetune.optimizer == "adam" and finetune.augmentation is None  # the schema's defaults
    vgg = params.study("kumar2022").row("VGG16")
    assert vgg.augmentation.transforms() == [("brightness", 0.2), ("flip", "horizontal_and_vertical"), ("rotation", 0.2)]
    assert params.study("lin2024").row("VGG16").learning_rate is None  # the grid supplies learning rates
    assert params.dataset("breakhis_stain").labels == "breakhis"  # a derived dataset has its source's labels
    assert params.epochs(params.study("wang2024").row("DenseNet")) == 6


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda p: p["studies"]["lin2024"]["protocols"]["source"].update(vall=0.2),
     "`studies.lin2024.protocols.source`: unknown setting `vall`; did you mean `val`?"),
    (lambda p: p["scale"].update(max_image_per_class=3),
     "unknown setting `max_image_per_class`; did you mean `max_images_per_class`?"),
    (lambda p: p.update(studys={}), "unknown setting `studys`; did you mean `studies`?"),
    (lambda p: p["studies"]["mobilenet2025"]["rows"]["frozen"].update(learning_rate=-1),
     "`studies.mobilenet2025.rows.frozen.learning_rate` = -1: Input should be greater than 0"),
    (lambda p: p["studies"]["mobilenet2025"]["rows"]["frozen"].update(learning_rate="fast"),
     "learning_rate` = 'fast': Input should be a valid number"),
    (lambda p: p["studies"]["mobilenet2025"]["rows"]["frozen"].update(epochs=0), "epochs` = 0"),
    (lambda p: p["studies"]["mobilenet2025"]["defaults"].update(batch_size=0), "batch_size` = 0"),
    (lambda p: p["studies"]["mobilenet2025"]["defaults"].update(image_size=16), "image_size` = 16"),
    (lambda p: p["studies"]["mobilenet2025"]["protocols"]["pooled"].update(train=0.8), "must sum to 1, not 1.1"),
    (lambda p: p["studies"]["lin2024"]["protocols"]["source"].update(val=1.0), "`val` must be below 1"),
    (lambda p: p["scale"].update(max_images_per_class=3), "needs at least 5 images per class"),
    (lambda p: p["studies"]["mobilenet2025"]["rows"]["frozen"].update(start_from="finetune"),
     "start_from `finetune` must name an earlier row"),
    (lambda p: p["studies"]["mobilenet2025"].update(dataset="melanom"), "not a known dataset"),
    (lambda p: p["studies"]["mobilenet2025"]["defaults"].update(backbone="MobileNetV9"), "backbone` = 'MobileNetV9'"),
    (lambda p: p["studies"]["mobilenet2025"]["defaults"]["head"].append({"conv": 3}), "unknown setting `conv`"),
    (lambda p: p["studies"]["wang2024"]["rows"]["DenseNet-SE-transfer"].update(init_from="nothing"),
     "not a `pretraining` entry"),
    (lambda p: p["studies"]["sarker2025"].update(evaluate_on="test", predict_on="test",
                                                 protocols={"p": {"method": "stratified", "train": 0.8, "val": 0.2}}),
     "has no `test` side"),
    (lambda p: p.update(seed="x"), "`seed` = 'x': Input should be a valid integer"),
])
def test_bad_settings_fail_with_one_line_naming_them(tmp_path, mutate, expected):
    with pytest.raises(UserError) as caught:
        load_with(tmp_path, mutate)
    message = str(caught.value)
    assert expected in message, message
    assert "\n" not in message and "Traceback" not in message


@pytest.mark.parametrize(("content", "expected"), [
    (b"\x89PNG\r\n\x1a\n\x00\x00binary", "not a UTF-8 text file"),
    (b"seed: [1, 2\nscale: {", "not valid YAML at line"),
    (b"- just\n- a list\n", "must hold a mapping"),
])
def test_unreadable_params_files(tmp_path, content, expected):
    path = tmp_path / "params.yaml"
    path.write_bytes(content)
    with pytest.raises(UserError, match=expected):
        config.load_params(path)
    with pytest.raises(UserError, match="not found"):
        config.load_params(tmp_path / "missing.yaml")
