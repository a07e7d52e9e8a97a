"""Issue 28's presentation: every BreakHis figure beside its baselines, one-class and random-init rows marked (and
one-class rows left out of the protocol difference), every fold's composition, the protocols described by what
their split files show, the deviations the data add, and one take-away sentence per study, in the report and on
the index. Synthetic split files and predictions (no images, no training): each test takes well under a second
or two."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from IPython.display import Markdown

from tlrepro.core import config, fileio, paths
from tlrepro.data.splits import protocol_sentence
from tlrepro.reports import evidence, protocols, sections
from tlrepro.reports import index as report
from tlrepro.results import compare
from tlrepro.studies.base import Results, Study
from tlrepro.studies.crossval import WHOLE, Unit

# per class, the rare subtypes first (one tubular adenoma, two lobular carcinomas: all tested in fold 3), then two
# common ones in turn
RARE = {"benign": ["tubular_adenoma"], "malignant": ["lobular_carcinoma", "lobular_carcinoma"]}
COMMON = {"benign": ["adenosis", "fibroadenoma"], "malignant": ["ductal_carcinoma", "mucinous_carcinoma"]}


def patients(benign: int, malignant: int) -> list[tuple[str, str, str]]:
    out = []
    for label, n in (("benign", benign), ("malignant", malignant)):
        names = RARE[label] + COMMON[label] * n
        out += [(f"14-{1000 * (label == 'malignant') + i}", label, names[i]) for i in range(n)]
    return out


def make_split(benign: int = 7, malignant: int = 16, per: int = 4, folds: int = 5,
               repeated: bool = False) -> pd.DataFrame:
    """kumar2022-like split rows: `image` (one split by image) and `patient` (grouped folds; the rare subtypes all
    in fold 3). With `repeated`, `official` too: every fold tests fold 1's patients plus its own (repeated splits)."""
    rows = []
    people = patients(benign, malignant)
    fold_of = {}
    others = [p for p in people if p[2] not in ("tubular_adenoma", "lobular_carcinoma")]
    for p in people:
        if p[2] in ("tubular_adenoma", "lobular_carcinoma"):
            fold_of[p[0]] = "3"
    for i, p in enumerate(others):
        fold_of[p[0]] = str(i % folds + 1)
    for accession, label, subtype in people:
        for i in range(per):
            image = {"path": f"img/{accession}-{i}.png", "label": label, "class_index": str(int(label == "malignant")),
                     "group": accession, "accession": accession, "patient": accession + "AB", "subtype_name": subtype,
                     "magnification": "100", "view": ""}
            rows.append({**image, "protocol": "image", "fold": "", "side": ("train", "train", "val", "test")[i]})
            for fold in map(str, range(1, folds + 1)):
                side = "test" if fold_of[accession] == fold else "train"
                rows.append({**image, "protocol": "patient", "fold": fold, "side": side})
                if repeated:
                    side = "test" if fold_of[accession] in (fold, "1") else "train"
                    rows.append({**image, "protocol": "official", "fold": fold, "side": side})
    return pd.DataFrame(rows)


@pytest.fixture
def study(tmp_project, monkeypatch) -> Study:
    params = config.load_params()
    settings = params.study("kumar2022")
    settings = settings.model_copy(update={"protocols": {k: settings.protocols[k] for k in ("image", "patient")}})
    audit = {"image": {"group": "accession", "accessions_on_several_sides": 23},
             "patient": {"group": "accession", "accessions_on_several_sides": 0, "folds_source": "ours (grouped_kfold)"}}
    fileio.write_json(paths.leakage_details_json("kumar2022"), audit)
    return Study("kumar2022", params, settings, make_split(), ("benign", "malignant"))


def with_official(study: Study) -> Study:
    """The study with an `official` protocol of repeated folds beside the others."""
    settings = study.settings.model_copy(update={"protocols": {
        **study.settings.protocols, "official": config.Split(method="folds", val=0.15)}})
    return Study(study.id, study.params, settings, make_split(repeated=True), study.classes)


def predict(study: Study, protocol: str, kind: str) -> SimpleNamespace:
    """A pooled result over the protocol's test rows: `right` (every image right), `malignant` (one class),
    `fold2` (right except fold 2, where every image is called malignant), `coin` (seeded noise)."""
    rows = study.protocol(protocol)
    frame = rows[rows["side"] == "test"].reset_index(drop=True)
    y = study.labels(frame)
    probs = {"right": 0.2 + 0.6 * y, "malignant": np.full(len(y), 0.9),
             "coin": np.random.default_rng(0).random(len(y)),
             "fold2": np.where(frame["fold"] == "2", 0.9, 0.2 + 0.6 * y)}[kind].astype(float)
    return SimpleNamespace(frame=frame, probs=probs, metrics=study.evaluate(frame, probs), folds=[], classifier=None,
                           unit=WHOLE, protocol=protocol, row=SimpleNamespace(name=kind), extra={}, side="test")


def results_of(study: Study, rows: dict[str, str], protocols_: tuple[str, ...] = ("image", "patient")) -> Results:
    return Results(by_key={(p, name): predict(study, p, kind) for p in protocols_ for name, kind in rows.items()})


@pytest.fixture
def shown(monkeypatch) -> list:
    out: list = []
    for module in (protocols, sections):
        monkeypatch.setattr(module, "display", out.append)
    monkeypatch.setattr(evidence, "update_display", lambda item, display_id: out.append(item))
    return out


def texts(shown: list) -> str:
    return "\n".join(item.data if isinstance(item, Markdown) else item.to_html() if hasattr(item, "to_html") else ""
                     for item in shown)


# ---------------------------------------------------------------- one class and random init


def test_a_one_class_row_is_marked_and_left_out_of_the_difference(study, shown):
    results = results_of(study, {"VGG16": "right", "MobileNetV3": "malignant", "ResNet50V2": "fold2"})
    assert evidence.one_class(study, results[("patient", "MobileNetV3")]) == "predicts malignant for every image"
    assert evidence.one_class(study, results[("patient", "ResNet50V2")]) == "predicts one class within fold 2 (malignant)"
    assert evidence.one_class(study, results[("patient", "VGG16")]) is None
    gap = protocols.protocol_gap(study, results, "image", "patient").set_index("row")
    assert gap.loc["VGG16", "difference"] == pytest.approx(0.0) and pd.isna(gap.loc["VGG16", "one_class"])
    for row in ("MobileNetV3", "ResNet50V2"):
        assert pd.isna(gap.loc[row, "difference"]) and pd.isna(gap.loc[row, "ci_low"]), row
        assert gap.loc[row, "one_class"]
    html = texts(shown)
    assert html.count("left out (one class)") == 2 and "MobileNetV3 is left out of the difference" in html


def test_a_fold_that_tests_one_class_does_not_mark_a_right_model(study):
    """A fold testing only malignant patients gives a right model one class there: not a trivial classifier."""
    split = study.split
    only_malignant = split[~((split["protocol"] == "patient") & (split["fold"] == "4") & (split["side"] == "test")
                             & (split["label"] == "benign"))]
    narrowed = Study(study.id, study.params, study.settings, only_malignant.reset_index(drop=True), study.classes)
    assert evidence.one_class(narrowed, predict(narrowed, "patient", "right")) is None


def test_random_init_rows_are_marked_in_tables_plots_and_on_the_index(study, shown, monkeypatch):
    monkeypatch.setattr(Study, "random_init", lambda self: ["MobileNetV3"])
    results = results_of(study, {"VGG16": "right", "MobileNetV3": "coin"})
    records = evidence.pooled_figures(study, results, "patient", colour=False)
    assert [r["random_init"] for r in records] == [False, True]
    gap = protocols.protocol_gap(study, results, "image", "patient")
    html = texts(shown)
    assert "MobileNetV3 (random init)" in html and "VGG16 (random init)" not in html
    figure = next(item for item in shown if hasattr(item, "axes") and item.axes)
    ticks = [t.get_text() for t in figure.axes[0].get_yticklabels()]
    assert ticks == ["VGG16", "MobileNetV3 (random init)"]
    lines = report.baseline_lines({"protocol_figures": fileio.plain(records)})
    assert [line["row"] for line in lines] == ["VGG16", "MobileNetV3 (random init)"]
    gaps = report.protocol_gaps({"kumar2022": {"protocol_gap": {"patient": fileio.records(gap.drop(columns="label"))},
                                               "provenance": {"primary_protocol": "image"}}})
    assert [line["row"] for line in gaps["lines"]] == ["VGG16", "MobileNetV3 (random init)"]


# ---------------------------------------------------------------- baselines and what the CV can resolve


def test_every_figure_is_set_beside_its_baselines_in_words(study, shown):
    results = results_of(study, {"VGG16": "right", "MobileNetV3": "malignant", "coin": "coin"})
    records = {r["row"]: r for r in evidence.pooled_figures(study, results, "patient", colour=False)}
    trivial = records["VGG16"]["trivial_group_accuracy"]
    assert trivial == pytest.approx(16 / 23)  # every fold's training majority is malignant: 16 of 23 patients
    assert records["VGG16"]["against_trivial"].startswith("better than calling every image malignant (0.696 at "
                                                          "patient level) by more than its interval")
    assert records["coin"]["against_trivial"].startswith("no better than calling every image malignant")
    assert records["MobileNetV3"]["against_trivial"] == "it predicts malignant for every image: a trivial classifier itself"
    assert records["VGG16"]["p_value"] < 0.01 < records["coin"]["p_value"]
    assert records["VGG16"]["resolution"]["benign"] == 7 and records["VGG16"]["resolution"]["malignant"] == 16
    html = texts(shown)
    for text in ("calling every image malignant", "chance", "permutation p", "7 benign and 16 malignant patients",
                 "Specificity rests on the benign patients alone", "0.696 (one class)"):
        assert text in html, text
    # a constant prediction prints no interval: neither the trivial baseline nor a one-class row
    one_class_line = next(line for line in html.splitlines() if "MobileNetV3 (one class)" in line)
    assert "[" not in one_class_line
    assert evidence.near_chance(records["coin"]) and evidence.near_chance(records["MobileNetV3"])
    assert evidence.near_chance(records["VGG16"]) is None


def test_too_few_patients_say_so_instead_of_an_interval(tmp_project, shown):
    params = config.load_params()
    settings = params.study("kumar2022")
    settings = settings.model_copy(update={"protocols": {k: settings.protocols[k] for k in ("image", "patient")}})
    fileio.write_json(paths.leakage_details_json("kumar2022"), {"patient": {"group": "accession"}})
    small = Study("kumar2022", params, settings, make_split(benign=2, malignant=5), ("benign", "malignant"))
    results = results_of(small, {"VGG16": "right"})
    [record] = evidence.pooled_figures(small, results, "patient", colour=False)
    assert record["group_accuracy_ci_low"] is None and record["groups"] == 7
    assert "too few patients for an interval" in record["against_trivial"]
    assert "too few patients for an interval (at least 10 needed)" in texts(shown)


# ---------------------------------------------------------------- the take-away sentence


def test_the_takeaway_names_the_paper_the_baseline_and_the_interval(study, shown):
    results = results_of(study, {"VGG16": "coin", "MobileNetV3": "right"})
    records = evidence.pooled_figures(study, results, "patient", colour=False)
    comparison = compare.compare("kumar2022", {"VGG16": {"accuracy": 0.889}}, metrics=["accuracy"])
    facts = evidence.takeaway(study, records, comparison)
    assert facts["row"] == "VGG16"  # the paper's best row, not the best of ours
    sentence = compare.takeaway_sentence(facts)
    rec = next(r for r in records if r["row"] == "VGG16")
    assert sentence.startswith("Under the paper's protocol VGG16 scores accuracy 0.889 (paper 0.875); with every "
                               f"patient tested once it scores {rec['group_accuracy']:.3f} "
                               f"[{rec['group_accuracy_ci_low']:.3f}, {rec['group_accuracy_ci_high']:.3f}] at "
                               "patient level (permutation p = ")
    assert "no better than calling every image malignant (0.696 at patient level)" in sentence
    assert f"**Take-away:** {sentence}" in texts(shown)


def test_the_takeaway_says_when_the_patients_are_too_few():
    facts = {"study": "kumar2022", "row": "VGG16", "random_init": False,
             "paper": {"metric": "accuracy", "ours": 0.923, "published": 0.875},
             "cv": {"unit": "patient", "value": 0.339, "low": None, "high": None, "groups": 7, "p_value": 0.6,
                        "against_trivial": "not shown to beat calling every image malignant (0.714 at patient level): "
                                           "too few patients for an interval"},
             "official": {"unit": "patient", "folds": 5, "mean": 0.52, "sd": 0.05}}
    sentence = compare.takeaway_sentence(facts)
    assert ("with every patient tested once it scores 0.339 at patient level from 7 patients (permutation p = 0.60), "
            "not shown to beat calling every image malignant (0.714 at patient level): too few patients") in sentence
    assert "over the dataset's 5 official folds" in sentence and "0.520 ± 0.050" in sentence
    alone = compare.takeaway_sentence({k: v for k, v in facts.items() if k != "paper"})
    assert alone.startswith("With every patient tested once, VGG16 scores 0.339 at patient level from 7 patients")
    assert "tested once" not in sentence.split("official folds")[1]


def test_the_index_opens_with_one_sentence_per_study(tmp_project):
    comparison = fileio.records(compare.compare("lin2024", {"VGG16": {"accuracy": 0.861, "accuracy_ci_low": 0.83,
                                                                      "accuracy_ci_high": 0.89}}))
    prov = {"dataset": "skin", "source_dataset": "skin", "paper_dataset": "skin", "random_init": [], "images": 3297,
            "published_images": 3297, "capped_epochs": {}, "max_images_per_class": None, "evaluated_on": "test",
            "primary_protocol": "source"}
    fileio.write_json(paths.metrics_json("lin2024"), {"study": "lin2024", "dataset": "skin", "random_init": [],
                                                      "results": {"VGG16": {"accuracy": 0.861}}})
    fileio.write_json(paths.details_json("lin2024"), {"study": "lin2024", "provenance": prov, "comparison": comparison})
    facts = {"study": "kumar2022", "row": "VGG16", "paper": {"metric": "accuracy", "ours": 0.889, "published": 0.875},
             "cv": {"unit": "patient", "value": 0.531, "low": 0.396, "high": 0.653, "groups": 23,
                        "against_trivial": "no better than calling every image malignant (0.696 at patient level)"}}
    figures = [{"protocol": "patient", "kind": "cv", "row": "MobileNetV3", "random_init": True,
                "one_class": "predicts malignant for every image", "unit": "patient", "groups": 23,
                "group_accuracy": 0.696, "group_accuracy_ci_low": 0.5, "group_accuracy_ci_high": 0.8,
                "trivial_group_accuracy": 0.696, "colour_group_accuracy": 0.698, "roc_auc": 0.5, "p_value": 1.0,
                "against_trivial": "it predicts malignant for every image: a trivial classifier itself"}]
    fileio.write_json(paths.metrics_json("kumar2022"), {"study": "kumar2022", "dataset": "breakhis",
                                                        "random_init": ["MobileNetV3"],
                                                        "results": {"patient/VGG16": {"accuracy": 0.5},
                                                                    "patient/MobileNetV3": {"accuracy": 0.6}}})
    fileio.write_json(paths.details_json("kumar2022"), {"study": "kumar2022", "takeaway": facts,
                                                        "protocol_figures": figures,
                                                        "provenance": {**prov, "dataset": "breakhis",
                                                                       "source_dataset": "breakhis",
                                                                       "paper_dataset": "breakhis",
                                                                       "primary_protocol": "image"}})
    html = report.write_index().read_text()
    opening = html[html.index("What to take away"):html.index("</section>")]
    assert html.index("What to take away") < html.index("Each study's reported figures")
    assert opening.count("<li>") == 5
    assert ("Under the paper&#39;s protocol VGG16 scores accuracy 0.889 (paper 0.875); with every patient tested once "
            "it scores 0.531 [0.396, 0.653] at patient level, no better than calling every image malignant") in opening
    assert "VGG16, the paper&#39;s best of 1 models" not in opening
    assert "VGG16 scores accuracy 0.861 [0.830, 0.890] against the paper&#39;s 0.847" in opening
    assert opening.count("not run yet") == 3
    assert "MobileNetV3 (random init, one class)" in html and "0.696 (one class)" in html
    assert "patient/MobileNetV3 (random init)" in html and "patient/VGG16 (random init)" not in html


# ---------------------------------------------------------------- folds, protocols, deviations


def test_every_fold_shows_its_composition_and_the_subtypes_it_never_trains_on(study, shown):
    frame = protocols.fold_composition(study, "patient").set_index("fold")
    assert list(frame.index) == ["1", "2", "3", "4", "5"]
    assert frame.loc["3", "subtypes never trained on"] == "lobular carcinoma (tested here), tubular adenoma (tested here)"
    for fold in ("1", "2", "4", "5"):
        assert frame.loc[fold, "subtypes never trained on"] == "none"
    assert frame.loc["3", "test patients"] == "2 benign, 5 malignant"
    assert "14-0 (B)" in frame.loc["3", "tested patients"] and "lobular carcinoma 8" in frame.loc["3", "test subtypes"]


def test_the_folds_are_described_by_what_the_split_file_shows(study, shown):
    protocols.folds_table(study)
    html = texts(shown)
    assert "5 folds that partition the data: each of its 92 images is tested exactly once" in html
    assert "each image is counted once: no rotated or flipped copies are added" in html
    assert "count each rotated or flipped view" not in html
    assert html.count("what every fold tests") == 1
    facts = evidence.protocol_facts(with_official(study), "official")
    sentence = protocol_sentence(facts)
    assert "repeated train/test splits, not a partition" in sentence and "exactly once" not in sentence
    assert (facts["tests_per_image"]["min"], facts["tests_per_image"]["max"]) == (1, 5)


def test_the_deviations_list_magnifications_accessions_and_class_balance_from_the_yaml():
    split = make_split()
    facts = compare.split_facts(split)
    assert facts == {"images": 92, "classes": {"benign": 28, "malignant": 64}, "magnifications": [100],
                     "accessions": 23, "patients": 23}
    listed = {d["what"]: d for d in compare.deviations("kumar2022", {"source_dataset": "breakhis"}, facts)}
    info = compare.datasets()["breakhis"]
    at_100 = info["by_magnification"][100]
    assert listed["Magnifications"]["ours"] == "100X only"
    assert listed["Patients"]["ours"] == f"23 of the {info['accessions']} accession numbers (23 patient folders)"
    share = at_100["benign"] / (at_100["benign"] + at_100["malignant"])
    assert listed["Class balance"]["paper"] == (f"the whole dataset at 100X: {share:.0%} benign ({at_100['benign']:,} "
                                                f"of {at_100['benign'] + at_100['malignant']:,})")
    assert listed["Class balance"]["ours"] == "30% benign (28 of 92)"
    assert info["accessions"] == 70 and share == pytest.approx(0.31, abs=0.005)
    total = sum(sum(c.values()) for c in info["by_magnification"].values())
    assert total == info["published_images"] == sum(info["classes"].values())
    assert not any(d["what"] == "Magnifications" for d in compare.deviations(
        "kumar2022", {"source_dataset": "breakhis"}, {**facts, "magnifications": [40, 100, 200, 400]}))


def test_the_reviews_minor_items(study, shown, monkeypatch):
    """One interval per statistic; 642 test images said as an inference; the augmentation seeds as they run;
    'above the paper' said as a comparison of two runs of one protocol."""
    results = results_of(study, {"VGG16": "coin"})
    r = results[("patient", "VGG16")]
    table = sections.accuracy_by_group(study, results)
    whole = table[(table["subset"] == "all") & (table["protocol"] == "patient")].iloc[0]
    assert (whole["patient_ci_low"], whole["patient_ci_high"]) == (r.metrics["patient_accuracy_ci_low"],
                                                                  r.metrics["patient_accuracy_ci_high"])
    assert (whole["image_ci_low"], whole["image_ci_high"]) == (r.metrics["accuracy_ci_low"], r.metrics["accuracy_ci_high"])
    protocols.paper_counts(study)
    html = texts(shown)
    assert "inferred, not stated" in html and "that was its test side" not in html
    seeds = next(d for d in compare.deviations("kumar2022", {}) if d["what"] == "Augmentation seeds")
    assert "augmentation_views: 4" in seeds["ours"] and "hash of the study seed, the view number and the image" in seeds["ours"]
    assert "inferred" in next(d for d in compare.deviations("kumar2022", {}) if d["what"] == "Split")["paper"]
    notes: list[str] = []
    monkeypatch.setattr(protocols, "note", notes.append)
    protocols.above_paper(pd.DataFrame({"row": ["VGG16"], "metric": ["accuracy"], "paper": [0.875], "ours": [0.889],
                                        "ci_low": [0.811], "ci_high": [0.979]}))
    assert "Both figures come from the paper's protocol" in notes[0] and "says nothing about leakage" in notes[0]


def test_the_official_folds_report_their_mean_and_spread_over_folds(study, shown):
    repeated = with_official(study)
    fileio.write_json(paths.leakage_details_json("kumar2022"), {"official": {"group": "accession",
                                                                             "accessions_on_several_sides": 9}})
    results = Results(by_key={("official", "VGG16"): predict(repeated, "official", "coin")})
    [record] = evidence.pooled_figures(repeated, results, "official", colour=False)
    assert record["kind"] == "official" and record["folds_accuracy"]["folds"] == 5
    assert set(record["folds_accuracy"]) == {"folds", "image", "group"}
    html = texts(shown)
    assert "the dataset&#39;s official folds" in html or "the dataset's official folds" in html
    assert "tested once" not in html and "honest" not in html.lower()
    assert "as Spanhol et al. report the official folds" in html
    facts = evidence.takeaway_facts(repeated, [record], None)
    assert facts["official"]["folds"] == 5 and "cv" not in facts


def test_unit_selection_is_whole_for_a_result_without_folds():
    assert Unit().describe([]) == ""


def test_grad_cam_prefers_the_whole_split_model_and_says_why_a_map_may_mean_nothing(study, shown, monkeypatch):
    from tlrepro.reports import model_views

    monkeypatch.setattr(Study, "random_init", lambda self: ["MobileNetV3"])
    results = results_of(study, {"VGG16": "right", "MobileNetV3": "coin"})
    for (protocol, _), r in results.items():
        r.classifier = object() if protocol == "image" else None  # a fold model is dropped once its fold is done
        r.folds = [] if protocol == "image" else [r]
    records = evidence.pooled_figures(study, results, "patient", colour=False)
    panels: list = []
    monkeypatch.setattr(model_views, "gradcam_panel", lambda study, result, n, caveats: panels.append(
        (result.row.name, result.protocol, caveats)))
    protocols.gradcam_panels(study, results, records)
    (vgg, vgg_protocol, vgg_caveats), (mobile, mobile_protocol, mobile_caveats) = panels
    assert (vgg_protocol, mobile_protocol) == ("image", "image")  # the whole split's model, not a fold's
    assert len(vgg_caveats) == 1 and "the model of the paper's protocol" in vgg_caveats[0]
    said = " ".join(mobile_caveats)
    assert "random initialisation" in said and "under the patient-level cross-validation" in said
    assert "says nothing of tissue" in said


def test_on_a_generated_tree_the_three_protocols_read_their_facts_and_colour_runs(tmp_project, shown):
    """The generated BreakHis tree (conftest): 7 folders, 6 accessions, Folds.csv testing some images three times and
    one accession never. Each protocol's figures are set beside the trivial and colour baselines on real images."""
    from conftest import build_breakhis_tree

    from tlrepro.data.index import prepare_dataset
    from tlrepro.data.splits import write_study_split

    build_breakhis_tree(paths.raw_dir("breakhis"))
    prepare_dataset("breakhis")
    split = write_study_split("kumar2022")
    params = config.load_params()
    study = Study("kumar2022", params, params.study("kumar2022"), split, ("benign", "malignant"))
    assert [protocols.protocol_kind(study, p) for p in study.protocols] == ["paper", "official", "cv"]
    results = results_of(study, {"VGG16": "right"}, tuple(study.protocols))
    records = [rec for p in study.protocols for rec in evidence.pooled_figures(study, results, p)]
    official = next(r for r in records if r["kind"] == "official")
    assert official["colour_accuracy"] is not None and official["folds_accuracy"]["folds"] == 5
    protocols.folds_table(study)
    html = texts(shown)
    assert "5 repeated train/test splits, not a partition" in html and "colour only" in html
    assert "tested exactly once" in html.split("the patient-level cross-validation")[1]
    facts = evidence.takeaway_facts(study, records, None)
    sentence = compare.takeaway_sentence(facts)
    assert "from 6 patients" in sentence and "too few patients" in sentence and "official folds" in sentence


def test_the_share_of_grad_cam_heat_on_the_image_edges():
    from tlrepro.reports import model_views

    uniform = np.ones((2, 20, 30))
    assert model_views.border_share(uniform) == pytest.approx(model_views.border_area((20, 30)))
    edges = np.zeros((20, 30))
    edges[0, :] = edges[:, -1] = 1
    assert model_views.border_share(edges) == 1.0 and model_views.border_share(np.zeros((20, 30))) == 0.0
    centre = np.zeros((20, 30))
    centre[8:12, 10:20] = 1
    assert model_views.border_share(centre) == 0.0


def test_the_protocols_side_by_side_each_beside_its_trivial_baseline(study, shown, monkeypatch):
    monkeypatch.setattr(Study, "random_init", lambda self: ["MobileNetV3"])
    repeated = with_official(study)
    results = results_of(repeated, {"VGG16": "right", "MobileNetV3": "malignant"}, ("image", "official", "patient"))
    records = [r for p in repeated.protocols for r in evidence.pooled_figures(repeated, results, p, colour=False)]
    frame = evidence.side_by_side(repeated, records).set_index("row")
    assert list(frame.index) == ["VGG16", "MobileNetV3 (random init)"]
    assert list(frame.columns) == ["image (paper's protocol)", "image (paper's protocol): trivial",
                                   "patient (every patient tested once)", "patient (every patient tested once): trivial",
                                   "official (official folds)", "official (official folds): trivial"]
    assert frame.loc["VGG16", "patient (every patient tested once)"].startswith("1.000 [1.000, 1.000]")
    assert "over folds 1.000 ± 0.000" in frame.loc["VGG16", "official (official folds)"]
    assert frame.loc["MobileNetV3 (random init)", "patient (every patient tested once): trivial"] == "0.696"
    assert "(one class)" in frame.loc["MobileNetV3 (random init)", "patient (every patient tested once)"]


def test_the_take_away_slot_at_the_top_is_the_display_the_sentence_updates(study, monkeypatch):
    import IPython.display

    slots: list = []
    monkeypatch.setattr(IPython.display, "display", lambda item, display_id: slots.append((display_id, item.data)))
    compare.takeaway_slot("kumar2022")
    updates: list = []
    monkeypatch.setattr(evidence, "update_display", lambda item, display_id: updates.append((display_id, item.data)))
    monkeypatch.setattr(evidence, "note", lambda text: None)
    evidence.takeaway(study, [], None)
    assert slots[0][0] == updates[0][0] == "tlrepro-takeaway-kumar2022"
    assert updates[0][1].startswith("**Take-away:**")


@pytest.mark.parametrize("study_id", ["kumar2022", "wang2024"])
def test_the_notebooks_open_with_the_slot_and_keep_the_figures_for_the_index(study_id):
    import nbformat

    cells = [c.source for c in nbformat.read(Path(__file__).parents[1] / f"notebooks/{study_id}.ipynb", as_version=4).cells
             if c.cell_type == "code"]
    opening = next(c for c in cells if "open_study(" in c)
    assert opening.index("takeaway_slot(study)") < opening.index("run = open_study(")
    outputs = next(c for c in cells if "outputs.write_outputs(" in c)
    assert "evidence.takeaway(run, figures, comparison)" in outputs
    assert '"protocol_figures": fileio.plain(figures)' in outputs and '"takeaway": fileio.plain(takeaway)' in outputs
    assert any("protocols.gradcam_panels(run, results, figures)" in c for c in cells)
    assert any("protocols.protocol_gaps(run, results)" in c for c in cells)
