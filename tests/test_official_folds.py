"""The dataset's official folds (BreakHis's Folds.csv, `method: folds`), issues 28 and 29: five repeated train/test
splits, not a partition. On a generated BreakHis tree whose Folds.csv (tests/conftest.py BREAKHIS_TEST_FOLDERS)
tests 14-12312 in three folds and 14-10147 in none, and puts folders 22549AB and 22549CD (one accession) on the two
sides of folds 1, 3 and 5: what the split file shows, the leakage audit's straddling accessions, the sentence built
from those facts, the file's line-by-line checks, and a partial download's match count."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from conftest import build_breakhis_tree, write_folds_csv, write_image

from tlrepro.core import config, paths
from tlrepro.core.errors import UserError
from tlrepro.data import folds, sanity
from tlrepro.data.index import prepare_dataset, read_index
from tlrepro.data.splits import describe_protocol, protocol_sentence, read_split, write_study_split

ADENOSIS = "BreaKHis_v1/histology_slides/breast/benign/SOB/adenosis/SOB_B_A_14-22549AB/100X"
FIRST = f"{ADENOSIS}/SOB_B_A-14-22549AB-100-001.png"  # listed on lines 2, 42, 82, 122 and 162 (one per fold)
BAD_LINE = 203  # after the header, 40 images x 5 folds (lines 2-201) and a blank line


@pytest.fixture
def official(tmp_project):
    """The generated tree (40 images, 7 folders, 6 accessions) prepared, and kumar2022's split written."""
    build_breakhis_tree(paths.raw_dir("breakhis"))
    prepare_dataset("breakhis")
    return write_study_split("kumar2022")


def test_the_official_folds_are_repeated_splits_and_their_facts_come_from_the_split_file(official):
    rows = official[official["protocol"] == "official"]
    assert sorted(rows["fold"].unique()) == ["1", "2", "3", "4", "5"]  # the file's own fold numbers
    facts = describe_protocol(rows)
    assert facts["kind"] == "repeated splits" and facts["folds"] == 5 and facts["images"] == 40
    # 14-12312 (10 images, 40X and 100X) in folds 1, 4, 5; 22549CD and 16196 twice; 14-10147 never
    assert facts["tests"] == 65 and facts["tests_per_image"]["histogram"] == {"0": 5, "1": 15, "2": 10, "3": 10}
    assert (facts["tests_per_image"]["min"], facts["tests_per_image"]["max"]) == (0, 3)
    assert facts["images_never_tested"] == 5 and facts["images_tested_more_than_once"] == 20
    accession, patient = facts["groups"]["accession"], facts["groups"]["patient"]
    assert accession["never_tested_examples"] == ["14-10147"] and (accession["never_tested"], accession["count"]) == (1, 6)
    assert (patient["never_tested"], patient["count"]) == (1, 7)
    # whole patient folders per side, but one accession's two folders straddle folds 1, 3 and 5
    assert accession["straddling_by_fold"] == {"1": 1, "2": 0, "3": 1, "4": 0, "5": 1} and facts["straddling"] == 3
    assert patient["straddling"] == 0 and facts["unit"] == "accession"
    written = read_split("kumar2022")  # what a report reads: the same facts from the file
    assert describe_protocol(written[written["protocol"] == "official"]) == facts
    # validation accessions come from each fold's training side; the test side is the file's
    for fold, part in rows.groupby("fold"):
        listed = {f"14-{n}" for n in ("22549CD 12312", "3411F 16196", "22549CD 16196", "9133 12312",
                                      "22549AB 12312")[int(fold) - 1].split()}
        assert set(part.loc[part["side"] == "test", "patient"]) == listed
        assert not set(part.loc[part["side"] == "val", "patient"]) & listed

    sentence = protocol_sentence(facts)
    assert sentence.startswith("5 repeated train/test splits, not a partition: 65 tests of 40 images, each image "
                               "tested 0 to 3 times; 5 images, 1 of the 6 accessions and 1 of the 7 patient folders "
                               "are never tested; 3 accessions in all (per fold: 1, 0, 1, 0, 1) have images on the "
                               "test side and on a training side of the same fold")
    # the grouped k-fold beside it is a partition, and says so; no sentence calls a protocol honest
    cv = describe_protocol(official[official["protocol"] == "patient"])
    assert cv["kind"] == "partition" and cv["tests"] == 40 and cv["straddling"] == 0
    assert "each of its 40 images is tested exactly once; no accession" in protocol_sentence(cv)
    sentences = [protocol_sentence(describe_protocol(r)) for _, r in official.groupby("protocol")]
    assert not [s for s in sentences if "honest" in s.lower()]
    assert "tested once" not in sentence and "exactly once" not in sentence


def test_the_leakage_audit_counts_accessions_straddling_each_official_fold(official):
    audit = json.loads(paths.leakage_json("kumar2022").read_text())
    ours = audit["official"]
    assert ours["accessions_straddling"] == 3 and ours["accessions_straddling_by_fold"] == {
        "1": 1, "2": 0, "3": 1, "4": 0, "5": 1}
    assert ours["patients_straddling"] == 0 and ours["patients_on_several_sides"] == 0
    assert ours["protocol_kind"] == "repeated splits" and ours["tests"] == 65 and ours["images_never_tested"] == 5
    assert ours["folds_source"] == "the dataset's (Folds.csv)"
    assert audit["patient"]["accessions_straddling"] == 0 and audit["patient"]["protocol_kind"] == "partition"
    assert audit["image"]["protocol_kind"] == "single split" and audit["image"]["accessions_straddling"] > 0
    details = json.loads(paths.leakage_details_json("kumar2022").read_text())["official"]
    assert details["facts"]["groups"]["accession"]["straddling"] == 3
    assert details["folds_file"] == {"file": "Folds.csv", "folds": 5, "rows_matched": 200, "images": 40,
                                     "images_matched": 40, "images_without_fold_row": 0}
    assert details["sentence"].endswith("; 200 rows of Folds.csv match images of this copy.")
    assert details["by_fold"]["1"]["accessions_straddling"] == 1


def test_a_partial_download_records_how_many_rows_matched(tmp_project):
    base = paths.raw_dir("breakhis")
    build_breakhis_tree(base, folds=False)
    # ten rows (two images x five folds) of a patient this copy lacks, as the mirror's file lists 7,909 images
    absent = [f"{f},100,{'test' if f == 2 else 'train'},BreaKHis_v1/histology_slides/breast/malignant/SOB/"
              f"papillary_carcinoma/SOB_M_PC_14-9146/100X/SOB_M_PC-14-9146-100-{i:03d}.png"
              for f in range(1, 6) for i in (1, 2)]
    write_folds_csv(base, extra_lines=tuple(absent))
    unlisted = write_image(base / ADENOSIS / "SOB_B_A-14-22549AB-100-009.png", seed=4242)  # in no fold
    prepare_dataset("breakhis")
    (warning,) = [w for w in sanity.read_warnings("breakhis") if w["check"] == "folds_partial"]
    facts = folds.recorded_coverage(sanity.read_warnings("breakhis"))
    assert facts == {"file": "Folds.csv", "folds": 5, "rows": 210, "rows_matched": 200, "images": 41,
                     "images_matched": 40, "images_without_fold_row": 1}
    assert warning["count"] == 10 and warning["message"].startswith(
        "data/raw/breakhis/Folds.csv: 200 of its 210 rows (image x fold) match images of this copy, in 5 folds; 10 "
        "rows name 2 images not in the index (rejected or absent), e.g. SOB_M_PC-14-9146-100-001; 1 of the index's "
        "41 images have no row in any fold")
    index = read_index("breakhis")
    assert (index.loc[index["path"].str.endswith(unlisted.name), folds.fold_columns(index)] == "").all(axis=None)

    split = write_study_split("kumar2022")
    rows = split[split["protocol"] == "official"]
    assert unlisted.name not in set(rows["path"].str.rsplit("/", n=1).str[-1])  # the folds cover only listed images
    details = json.loads(paths.leakage_details_json("kumar2022").read_text())["official"]
    assert details["folds_file"]["rows_matched"] == 200 and details["folds_file"]["images_without_fold_row"] == 1
    assert details["facts"]["images_left_out"] == 1 and "1 image of the study not in it" in details["sentence"]
    # the report merges prepare's record (the file's own row count) into the split's facts
    merged = describe_protocol(rows, images=split["path"], folds_file={**details["folds_file"], **facts})
    assert merged["folds_file"]["rows_used"] == 200
    assert protocol_sentence(merged).endswith("; 200 of the 210 rows of Folds.csv match images of this copy.")


def test_a_complete_folds_file_records_no_warning(tmp_project):
    build_breakhis_tree(paths.raw_dir("breakhis"))
    prepare_dataset("breakhis")
    assert folds.recorded_coverage(sanity.read_warnings("breakhis")) is None
    assert not [w for w in sanity.read_warnings("breakhis") if w["check"].startswith("folds")]


@pytest.mark.parametrize(("line", "expected"), [
    (f"1,100,test,{FIRST}", f"line {BAD_LINE} (fold 1, SOB_B_A-14-22549AB-100-001.png): the image is on both "
                            f"sides of fold 1 (train on line 2, test here)"),
    (f"3,100,train,{FIRST}", f"line {BAD_LINE} (fold 3, SOB_B_A-14-22549AB-100-001.png): the image is listed "
                             f"twice in fold 3 (line 82, also train)"),
    (f"0,100,test,{FIRST}", f"line {BAD_LINE} (fold 0, SOB_B_A-14-22549AB-100-001.png): the fold number '0' is "
                            f"not a positive integer"),
    (f"-2,100,test,{FIRST}", f"line {BAD_LINE} (fold -2, SOB_B_A-14-22549AB-100-001.png): the fold number '-2' "
                             f"is not a positive integer"),
    (f"2,100,tset,{FIRST}", f"line {BAD_LINE} (fold 2, SOB_B_A-14-22549AB-100-001.png): `grp` is 'tset', not "
                            f"train or test"),
])
def test_a_damaged_folds_file_is_refused_naming_the_file_the_line_the_fold_and_the_image(tmp_project, line, expected):
    base = paths.raw_dir("breakhis")
    build_breakhis_tree(base, folds=False)
    write_folds_csv(base, extra_lines=("", line))  # a blank line is skipped but counted
    with pytest.raises(UserError) as caught:
        prepare_dataset("breakhis")
    message = str(caught.value)
    assert message.startswith(f"data/raw/breakhis/Folds.csv {expected}")
    assert "\n" not in message and not paths.index_csv("breakhis").exists()


def test_the_cli_refuses_a_folds_file_in_one_line(tmp_project):
    base = paths.raw_dir("breakhis")
    build_breakhis_tree(base, per_patient=2, folds=False)
    write_folds_csv(base, extra_lines=(f"1,100,test,{FIRST}",))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAGGLE_", "TLREPRO_"))}
    result = subprocess.run([sys.executable, "-m", "tlrepro", "prepare", "breakhis"], cwd=tmp_project, text=True,
                            env={**env, "TLREPRO_ROOT": str(tmp_project)}, capture_output=True, timeout=120)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "Folds.csv line 82 (fold 1, SOB_B_A-14-22549AB-100-001.png): the image is on both sides of fold 1" in errors[0]


def test_fold_numbers_are_the_files_own(tmp_project):
    base = paths.raw_dir("breakhis")
    build_breakhis_tree(base, folds=False)
    write_folds_csv(base, {3: ("14-9133", "14-12312"), 7: ("14-22549AB", "14-16196")})
    prepare_dataset("breakhis")
    assert folds.fold_columns(read_index("breakhis")) == ["dataset_fold_3", "dataset_fold_7"]
    split = write_study_split("kumar2022")
    rows = split[split["protocol"] == "official"]
    assert sorted(rows["fold"].unique()) == ["3", "7"]
    assert set(rows.loc[(rows["fold"] == "7") & (rows["side"] == "test"), "patient"]) == {"14-22549AB", "14-16196"}


def test_a_folds_protocol_needs_the_datasets_folds_file_setting(tmp_project):
    params = yaml.safe_load(paths.PARAMS_FILE.read_text())
    params["datasets"]["breakhis"].pop("folds_file")
    paths.PARAMS_FILE.write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.raises(UserError, match=r"studies\.kumar2022\.protocols\.official is method `folds` \(the dataset's "
                                        r"own folds\), but datasets\.breakhis\.folds_file is not set"):
        config.load_params()


def test_describe_protocol_of_a_hand_made_frame():
    """The facts count tests per (fold, image): an image's views in one fold are one test."""
    frame = pd.DataFrame({
        "fold": ["1"] * 4 + ["2"] * 4, "side": ["train", "test", "test", "train", "test", "train", "train", "test"],
        "view": ["identity", "identity", "rot90", "identity", "identity", "identity", "identity", "identity"],
        "path": ["a", "b", "b", "c", "a", "b", "c", "c"], "label": "x", "group": ["g1", "g2", "g2", "g3"] * 2})
    facts = describe_protocol(frame, images=["a", "b", "c", "d"])
    assert facts["tests"] == 3 and facts["tests_per_image"]["histogram"] == {"1": 3}
    assert facts["kind"] == "repeated splits" and facts["images_left_out"] == 1  # d: no row, so not a partition
    assert describe_protocol(frame, images=["a", "b", "c"])["kind"] == "partition"
    assert facts["unit"] == "group" and facts["groups"]["group"]["straddling"] == 0
