"""Issue 21: no input hangs or crashes a command, a card that disagrees with its model is refused, and odd data
is named, not guessed. FIFOs, sockets, device links and looping links in the folders that predict, prepare and
download read; unreadable files; strict settings and safe row names; BreakHis magnifications and class folders,
empty class folders, missing magnifications and stain normalization of blank images, in the stage output, the
warnings file and the report. Any call that could wait on a FIFO runs under a time limit."""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import json
import os
import socket
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, build_breakhis_tree, build_lc25000_tree, write_image

from tlrepro import cli
from tlrepro.core import config, paths
from tlrepro.core.errors import UserError
from tlrepro.data.derive import derive_dataset
from tlrepro.data.index import prepare_dataset, read_index
from tlrepro.data.labels import BINARY_CLASSES
from tlrepro.data.stain import StainNormalizer

SKIN = "fanconic/skin-cancer-malignant-vs-benign"
LIMIT_S = 60  # far above what any call here needs; a call still running then is waiting on a FIFO


def within_limit(call, *args, fifos=(), **kwargs):
    """call(*args, **kwargs) in a thread; if it is still running after LIMIT_S, the FIFOs are opened for writing
    and closed (a reader waiting on one then reads an empty file and goes on) and the test fails."""
    outcome = {}

    def target():
        try:
            outcome["value"] = call(*args, **kwargs)
        except BaseException as exc:  # handed to the test thread below
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(LIMIT_S)
    if thread.is_alive():
        for fifo in fifos:
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(LIMIT_S)
        pytest.fail(f"{call.__name__} was still running after {LIMIT_S} s: it waited on a FIFO")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def make_socket(path: Path) -> socket.socket:
    """A bound Unix socket at `path` (bound by its name from inside its folder: paths over 107 bytes fail)."""
    here = os.getcwd()
    os.chdir(path.parent)
    try:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(path.name)
    finally:
        os.chdir(here)
    return sock


@pytest.fixture
def special_files():
    """make(folder, outside): a FIFO, a socket, a device link, a broken link, looping links and a link to a
    folder outside in `folder`; returns the words each must be listed with. Sockets are closed afterwards."""
    sockets = []

    def make(folder: Path, outside: Path) -> dict[str, str]:
        folder.mkdir(parents=True, exist_ok=True)
        os.mkfifo(folder / "pipe.jpg")
        sockets.append(make_socket(folder / "sock.png"))
        os.symlink("/dev/null", folder / "device.jpg")
        os.symlink(folder / "nowhere.jpg", folder / "broken.jpg")
        os.symlink("self.jpg", folder / "self.jpg")
        os.symlink("..", folder / "up")  # a folder link back to the folder above
        os.symlink(folder.parent.parent, folder / "top")  # the folder read, or one that holds it
        write_image(outside / "linked.jpg", seed=321)
        os.symlink(outside, folder / "elsewhere")  # a folder outside the tree: followed
        return {"pipe.jpg": "named pipe (FIFO)", "sock.png": "a socket", "device.jpg": "a link to a character device",
                "broken.jpg": "broken link", "self.jpg": "symlink loop", "up": "symlink loop",
                "top": "symlink loop"}

    yield make
    for sock in sockets:
        sock.close()


def deny(monkeypatch: pytest.MonkeyPatch, *denied: Path) -> None:
    """Opening any of `denied` fails with EACCES, by every route Python opens files (the tests run as root,
    which permission bits do not stop)."""
    names = {os.path.abspath(p) for p in denied}

    def guard(real):
        def opener(file, *args, **kwargs):
            if isinstance(file, str | bytes | os.PathLike) and os.path.abspath(os.fsdecode(file)) in names:
                raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(file))
            return real(file, *args, **kwargs)
        return opener

    monkeypatch.setattr(os, "open", guard(os.open))
    monkeypatch.setattr(builtins, "open", guard(builtins.open))
    monkeypatch.setattr(io, "open", guard(io.open))


def recorded_warnings(key: str) -> list[dict]:
    """data/index/<key>.warnings.json, as prepare or derive wrote it."""
    document = json.loads((paths.INDEX / f"{key}.warnings.json").read_text())
    assert document["dataset"] == key
    return document["warnings"]


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(err: str, *expected: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A TinyCNN (random weights, 32 px) saved with a card that agrees with it."""
    from tlrepro.modeling import cards, models

    row = config.resolve_row("tiny", config.RowSettings(), config.RowSettings(
        backbone="TinyCNN", weights="random", image_size=32, batch_size=4, learning_rate=1e-3, epochs=1,
        head=[{"pool": "avg"}, {"dense": 1, "activation": "sigmoid"}]))
    clf = models.build_classifier(row, classes=BINARY_CLASSES, seed=0)
    path = tmp_path_factory.mktemp("models") / "demo" / "tiny.keras"
    cards.save(clf.model, path, {"name": "demo/tiny", "image_size": 32, "classes": list(BINARY_CLASSES),
                                 "threshold": 0.5, "preprocessing": clf.preprocessing.mode, "training_phashes": []})
    return path


# ---------------------------------------------------------------- 1. special files: listed, never read


def test_prepare_lists_special_files_and_loops_and_never_waits(skin_raw, tmp_path, special_files):
    folder = paths.raw_dir("skin") / "train/benign"
    expected = special_files(folder, tmp_path / "outside")
    within_limit(prepare_dataset, "skin", fifos=[folder / "pipe.jpg"])
    rejected = pd.read_csv(paths.rejected_csv("skin"))
    reasons = dict(zip(rejected["path"], rejected["reason"], strict=True))
    for name, words in expected.items():
        assert words in reasons[f"data/raw/skin/train/benign/{name}"], (name, reasons)
    assert "never read" in reasons["data/raw/skin/train/benign/pipe.jpg"]
    index = read_index("skin")
    linked = index[index["path"] == "data/raw/skin/train/benign/elsewhere/linked.jpg"]  # a folder outside: read
    assert linked["label"].tolist() == ["benign"]


def test_predict_skips_special_files_and_never_waits(tiny_model, tmp_path, special_files):
    from tlrepro.modeling.predict import predict_folder

    folder = tmp_path / "to-label"
    write_image(folder / "good.png", seed=5)
    expected = special_files(folder / "odd", tmp_path / "outside")
    _, table, rejected = within_limit(predict_folder, tiny_model, folder, out=tmp_path / "p.csv", progress=False,
                                      fifos=[folder / "odd/pipe.jpg"])
    assert sorted(table["path"]) == ["good.png", "odd/elsewhere/linked.jpg"]
    reasons = dict(zip(rejected["path"], rejected["reason"], strict=True))
    for name, words in expected.items():
        assert words in reasons[f"odd/{name}"], (name, reasons)


def test_download_lists_what_it_skips_and_copies_only_regular_files(tmp_project, kaggle_mirror, monkeypatch,
                                                                      capsys, special_files):
    source = kaggle_mirror / SKIN
    expected = special_files(source / "odd", kaggle_mirror.parent / "outside")
    monkeypatch.setenv("KAGGLE_MIRROR", str(kaggle_mirror))
    code, out, err = within_limit(run_cli, capsys, "download", "skin", fifos=[source / "odd/pipe.jpg"])
    assert code == 0, err
    for name, words in expected.items():
        line = next(line for line in out.splitlines() if line.startswith(f"skipped odd/{name}:"))
        assert words in line, line
    copied = paths.raw_dir("skin") / "odd"
    assert sorted(p.name for p in copied.rglob("*")) == ["elsewhere", "linked.jpg"]
    assert all(p.is_dir() or (p.is_file() and not p.is_symlink()) for p in copied.rglob("*"))


# ---------------------------------------------------------------- 2. OSError at a file boundary: one line


def test_an_unreadable_mirror_file_is_one_line_and_keeps_the_previous_download(tmp_project, kaggle_mirror,
                                                                                monkeypatch, capsys):
    old = paths.raw_dir("skin") / "old.jpg"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"previous download")
    locked = kaggle_mirror / SKIN / "train/Benign/b1.jpg"
    deny(monkeypatch, locked)
    monkeypatch.setenv("KAGGLE_MIRROR", str(kaggle_mirror))
    code, _, err = run_cli(capsys, "download", "skin")
    assert code == 2
    one_line(err, f"Cannot read {locked} (Permission denied)", "chmod", "data/raw/skin was left as it was")
    assert [p.name for p in paths.raw_dir("skin").iterdir()] == ["old.jpg"]


def test_unreadable_params_and_index_are_one_line(tmp_project, skin_raw, monkeypatch, tmp_path):
    prepare_dataset("skin")
    params = tmp_path / "locked" / "params.yaml"  # not the cached one
    params.parent.mkdir()
    params.write_bytes(paths.PARAMS_FILE.read_bytes())
    deny(monkeypatch, params, paths.index_csv("skin"))
    with pytest.raises(UserError, match=r"params.yaml cannot be read \(Permission denied\): make it readable"):
        config.load_params(params)
    with pytest.raises(UserError, match=r"data/index/skin.csv cannot be read \(Permission denied\)"):
        read_index("skin")


@pytest.mark.parametrize(("change", "expected"), [
    ({"image_size": 64}, "says tiny.keras takes 64x64x3 images, but the model takes 32x32x3"),
    ({"classes": ["a", "b", "c"]}, "names 3 classes (a, b, c), which needs 3 output unit(s), but tiny.keras has 1"),
    ({"preprocessing": "caffe"}, "preprocesses images as `caffe`, but the model has preprocessing `unit`"),
    ({"threshold": None}, "gives no decision threshold between 0 and 1 (None)"),
])
def test_a_card_that_disagrees_with_its_model_is_refused_before_any_image(tiny_model, tmp_path, monkeypatch,
                                                                          capsys, change, expected):
    from tlrepro.modeling import predict

    copy = tmp_path / "m" / "tiny.keras"
    copy.parent.mkdir()
    copy.write_bytes(tiny_model.read_bytes())
    card = {**json.loads(paths.card_of(tiny_model).read_text()), **change}
    paths.card_of(copy).write_text(json.dumps(card))
    write_image(tmp_path / "images" / "a.png", seed=1)
    read = []
    monkeypatch.setattr(predict, "_decode_file", lambda *a: read.append(a) or pytest.fail("an image was read"))
    code, _, err = run_cli(capsys, "predict", str(copy), str(tmp_path / "images"), "--out", str(tmp_path / "p.csv"))
    assert code == 2 and not read
    one_line(err, "tiny.card.json", expected, "re-run the study that saved the model")


# ---------------------------------------------------------------- 3. strict settings, safe row names

BASE = yaml.safe_load((REPO / "params.yaml").read_text())


def params_from(tmp_path: Path, text: str) -> config.Params:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return config.load_params(path)


def with_change(dotted: str, value: object) -> str:
    params = json.loads(json.dumps(BASE))
    node = params
    *parents, last = dotted.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    return yaml.safe_dump(params, sort_keys=False)


@pytest.mark.parametrize(("dotted", "value", "expected"), [
    ("studies.lin2024.repeats", "3",
     "`studies.lin2024.repeats` = '3': Input should be a valid integer (written as text: remove the quotes)."),
    ("studies.mobilenet2025.rows.frozen.learning_rate", "0.001",
     "learning_rate` = '0.001': Input should be a valid number (written as text: remove the quotes)."),
    ("studies.kumar2022.defaults.epochs", 20.0, "epochs` = 20.0: Input should be a valid integer"),
    ("studies.kumar2022.defaults.batch_size", True, "batch_size` = True: Input should be a valid integer"),
    ("seed", "42", "`seed` = '42': Input should be a valid integer"),
])
def test_a_number_written_as_text_is_refused(tmp_path, dotted, value, expected):
    with pytest.raises(UserError) as caught:
        params_from(tmp_path, with_change(dotted, value))
    assert expected in str(caught.value), str(caught.value)


def test_yaml_numbers_work_as_written(tmp_path):
    text = with_change("studies.mobilenet2025.rows.frozen.learning_rate", 1)  # an integer where a float goes
    assert "learning_rate: 1.0e-05" in text and "confidence: 0.95" in text
    # YAML 1.1 reads 1e-05 (no dot, as DVC writes a -S value) as text; it is the number
    text = text.replace("learning_rate: 1.0e-05", "learning_rate: 1e-05").replace("confidence: 0.95", "confidence: 9e-1")
    params = params_from(tmp_path, text)
    assert params.study("mobilenet2025").row("frozen").learning_rate == 1.0
    assert params.study("mobilenet2025").row("finetune").learning_rate == 1e-5
    assert params.evaluation.confidence == 0.9


@pytest.mark.parametrize(("where", "name", "expected"), [
    ("rows", "a/b", "row name `a/b` cannot be part of a file name or URL"),
    ("rows", "../up", "row name `../up`"),
    ("rows", "with space", "row name `with space`"),
    ("protocols", "x/y", "protocol name `x/y` cannot be part of a file name or URL"),
])
def test_row_and_protocol_names_are_safe_in_paths_and_urls(tmp_path, where, name, expected):
    params = json.loads(json.dumps(BASE))
    entries = params["studies"]["mobilenet2025"][where]
    first = next(iter(entries))
    params["studies"]["mobilenet2025"][where] = {name: entries[first], **{k: v for k, v in entries.items()
                                                                          if k != first}}
    if where == "rows":
        params["studies"]["mobilenet2025"]["rows"]["finetune"]["start_from"] = name
    with pytest.raises(UserError) as caught:
        params_from(tmp_path, yaml.safe_dump(params, sort_keys=False))
    message = str(caught.value)
    assert f"`studies.mobilenet2025.{where}`" in message and expected in message, message


# ---------------------------------------------------------------- 4. data sanity, in the output and the report


def test_breakhis_oddities_are_rejected_named_and_recorded(tmp_project, capsys):
    build_breakhis_tree(paths.raw_dir("breakhis"))
    base = paths.raw_dir("breakhis") / "BreaKHis_v1/histology_slides/breast"
    patient = base / "benign/SOB/adenosis/SOB_B_A_14-22549AB"
    write_image(patient / "0X/SOB_B_A-14-22549AB-0-001.png", seed=901)
    write_image(patient / "100X/SOB_B_A-14-22549AB-99999999999999999999-002.png", seed=902)
    write_image(base / "malignant/SOB/ductal_carcinoma/SOB_M_DC_14-12312/100X/SOB_B_A-14-22549AB-100-009.png", 903)
    prepare_dataset("breakhis")
    out = capsys.readouterr().out
    rejected = pd.read_csv(paths.rejected_csv("breakhis")).set_index("path")["reason"]
    by_name = {p.rsplit("/", 1)[-1]: r for p, r in rejected.items()}
    assert by_name["SOB_B_A-14-22549AB-0-001.png"].startswith(
        "magnification 0X in the file name is not one of BreakHis's 40X, 100X, 200X, 400X")
    assert "magnification 99999999999999999999X" in by_name["SOB_B_A-14-22549AB-99999999999999999999-002.png"]
    assert by_name["SOB_B_A-14-22549AB-100-009.png"] == (
        "name and folder disagree on the class: the name says benign (SOB_B), the folder `malignant` says "
        "malignant: move the file or correct its name")
    warnings = {w["check"]: w for w in recorded_warnings("breakhis")}
    assert warnings["magnification"]["count"] == 2 and warnings["class_disagreement"]["count"] == 1
    missing = warnings["magnifications_missing"]
    assert missing["examples"] == ["200X", "400X"]
    assert missing["message"] == ("magnifications present: 40X (5 images), 100X (35 images); missing: 200X, 400X "
                                  "(BreakHis has 40X, 100X, 200X, 400X): nothing can be measured at those")
    for w in warnings.values():
        assert f"warning: {w['message']}" in out
    index = read_index("breakhis")
    assert not index["path"].str.contains("-0-001|99999|100-009").any()


def test_an_empty_class_folder_is_named(tmp_project, capsys):
    build_lc25000_tree(paths.raw_dir("lc25000"))
    empty = paths.raw_dir("lc25000") / "lung_colon_image_set/lung_image_sets/lung_n"
    for image in empty.iterdir():
        image.unlink()
    prepare_dataset("lc25000")
    out = capsys.readouterr().out
    (found,) = recorded_warnings("lc25000")
    assert found["check"] == "empty_folder"
    assert found["examples"] == ["data/raw/lc25000/lung_colon_image_set/lung_image_sets/lung_n"]
    assert ("warning: 1 empty class folder(s) with no image, beside folders that hold images: "
            "data/raw/lc25000/lung_colon_image_set/lung_image_sets/lung_n: check the download") in out


def test_a_complete_copy_has_no_warnings(tmp_project):
    build_lc25000_tree(paths.raw_dir("lc25000"))
    prepare_dataset("lc25000")
    assert recorded_warnings("lc25000") == []


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
@pytest.mark.parametrize(("fill", "words"), [(0, "blank image"), (128, "blank image"), ("half", "saturated image")])
def test_blank_and_saturated_images_keep_their_colours(method, fill, words):
    from test_stain import REFERENCE, SOURCE

    if fill == "half":
        image = SOURCE.copy()
        image[:40] = 0
    else:
        image = np.full((64, 64, 3), fill, np.uint8)
    result = StainNormalizer(method, REFERENCE).normalize(image)
    assert not result.normalized and result.reason.startswith(words) and result.image is image


def test_derive_counts_stain_fallbacks_and_keeps_the_source_warnings(tmp_project, capsys):
    build_breakhis_tree(paths.raw_dir("breakhis"))
    black = (paths.raw_dir("breakhis") / "BreaKHis_v1/histology_slides/breast/benign/SOB/fibroadenoma/"
             "SOB_B_F_14-9133/100X/SOB_B_F-14-9133-100-009.png")
    from PIL import Image

    Image.new("RGB", (64, 64), (0, 0, 0)).save(black)
    prepare_dataset("breakhis")
    capsys.readouterr()
    derive_dataset("breakhis_stain")
    out = capsys.readouterr().out
    stain = pd.read_csv(paths.INDEX / "breakhis_stain.stain.csv").set_index("source")
    assert not stain.loc[paths.relative(black), "normalized"]
    assert stain.loc[paths.relative(black), "reason"].startswith("blank image")
    warnings = {(w["dataset"], w["check"]): w for w in recorded_warnings("breakhis_stain")}
    fallback = warnings[("breakhis_stain", "stain_fallback")]
    assert paths.relative(black) in fallback["examples"] and "1 blank image" in fallback["message"]
    assert ("breakhis", "magnifications_missing") in warnings
    assert f"warning: {fallback['message']}" in out and "warning (breakhis): magnifications present" in out
    derived = paths.derived_dir("breakhis_stain") / black.relative_to(paths.raw_dir("breakhis")).with_suffix(".png")
    assert np.asarray(Image.open(derived)).max() == 0  # kept in its original colours: still black


def test_the_report_shows_the_data_warnings_and_the_missing_magnifications(tmp_project):
    from types import SimpleNamespace

    from tlrepro.reports import sections

    build_breakhis_tree(paths.raw_dir("breakhis"), folds=False)
    prepare_dataset("breakhis")
    study = SimpleNamespace(dataset="breakhis", paper={"rows": {"DenseNet": {"image_accuracy_40x": 0.7,
                                                                             "patient_accuracy_400x": 0.8,
                                                                             "model_size_mb": 80}}},
                            split=read_index("breakhis"))
    frame = sections.data_warnings(study)
    # the generated copy has no Folds.csv either (params name one): that is a warning of its own
    assert list(frame["check"]) == ["magnifications missing", "folds missing", "magnifications the paper reports on"]
    assert frame["what"].iloc[2] == ("the paper reports on 40X, 400X; this run's data has 40X, 100X, so nothing "
                                     "at 400X")
