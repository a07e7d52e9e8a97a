"""The report sections every study notebook shares: header, data, leakage audit, figures, paper vs ours.

Each function displays readable tables (named columns, no raw indexes, rounded values, intervals written
`0.861 [0.832, 0.889]`) and figures, and returns what it showed so a notebook can reuse it. Numbers come
from the run (its split, its params); nothing here knows a particular study.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from IPython.display import HTML, Markdown, display, update_display

from tlrepro.core import fileio, identity, paths
from tlrepro.core.errors import UserError
from tlrepro.core.numbers import interval as ci
from tlrepro.core.numbers import is_count, number, time_unit
from tlrepro.data import labels as lab
from tlrepro.data import sanity
from tlrepro.data.labels import predicted_positive
from tlrepro.data.leakage import MATCH_KINDS
from tlrepro.results import compare, comparison_plots, metrics, plots
from tlrepro.studies.base import Study

SIDE_NAMES = {"train": "train", "val": "validation", "test": "test"}


def table(frame: pd.DataFrame, caption: str | None = None, digits: int = 4) -> Any:
    """A DataFrame as people read it: no index, numbers formatted (`number`; a column named with the word `s`
    or `min` holds times, shown with their unit), text left-aligned, an optional caption."""
    text = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    styler = frame.style.hide(axis="index").format(lambda v: number(v, digits))
    for column in frame.columns:
        if unit := time_unit(column):
            styler = styler.format(lambda v, u=unit: number(v, digits, unit=u), subset=[column])
    if text:
        styler = styler.set_properties(subset=text, **{"text-align": "left"})
    if caption:
        styler = styler.set_caption(caption)
    return styler.set_table_styles([
        {"selector": "caption", "props": "caption-side: top; font-weight: bold; text-align: left;"},
        {"selector": "th", "props": "text-align: left;"},
        {"selector": "td", "props": "padding: 2px 10px;"}])


def show(obj: Any) -> Any:
    display(obj)
    return obj


def note(text: str) -> None:
    display(Markdown(text))


def header(study: Study, description: str = "") -> None:
    """The run's headline: random-weight warning, dataset (and whether it is the paper's) and seed, and every
    row's settings."""
    prov = study.provenance()
    if quick := identity.quick_pass(prov):
        display(HTML(f'<div style="background:#fff3e0;border-left:6px solid #ef6c00;padding:.6em 1em;'
                     f'font-weight:600;color:#8a3c00">⚠ {quick}</div>'))
    banner = compare.random_init_banner(study.random_init(), study.random_init_via())
    if banner:
        display(HTML(f'<div style="background:#fdecea;border-left:6px solid #c62828;padding:.6em 1em;'
                     f'font-weight:600;color:#8e1b1b">⚠ {banner}</div>'))
    if dataset_note := compare.dataset_note(prov):
        note(f"**{dataset_note}**")
    subset = f" ({used})" if (used := identity.images_text(prov)) else ""
    note(f"**Dataset:** `{study.dataset}`{subset} · **protocols:** {', '.join(study.protocols)} · "
         f"**evaluated on:** {SIDE_NAMES[study.settings.evaluate_on]} · **seed:** {study.seed}"
         + (f" · **seeds per row:** {study.settings.repeats}" if study.settings.repeats > 1 else "")
         + (f"\n\n{description}" if description else ""))
    show(table(rows_table(study), "Rows and their settings (params.yaml)"))


def rows_table(study: Study) -> pd.DataFrame:
    records, capped = [], study.provenance()["capped_epochs"]
    for row in study.rows:
        weights = prov_weights(study, row.name)
        records.append({
            "row": row.name, "backbone": row.backbone + (" + SE" if row.se else ""),
            "weights": weights, "start": row.start_from or row.init_from or "new",
            "trainable backbone": f"from {row.trainable_from}" if row.trainable_from else (
                "all" if row.trainable_layers == "all" else f"last {row.trainable_layers} layers"
                if row.trainable_layers else "frozen"), "optimizer": row.optimizer,
            "learning rate": f"{row.learning_rate:g}" if row.learning_rate is not None else "grid",
            "epochs": _epochs(row, capped.get(row.name)),
            "batch": _batch(study, row.batch_size), "image size": row.image_size,
            "augmentation": _augmentation(row),
            "head": " → ".join(_layer(h) for h in row.head),
        })
    return pd.DataFrame(records)


def _epochs(row: Any, capped: dict[str, Any] | None) -> str:
    """The epochs the row ran (`capped`: its provenance's cap, if any): '2 (paper 40)', 'grid', or 'grid, 2 per
    cell (capped; the grid's 10, 20, …)'."""
    if row.epochs:
        return f"{capped['ours']} (paper {row.epochs})" if capped else str(row.epochs)
    return f"grid, {capped['ours']} per cell (capped; {capped['paper']})" if capped else "grid"


def _augmentation(row: Any) -> str:
    """The row's transforms, and how they are drawn: per epoch through the whole model, or K views cached once."""
    if not row.augmentation:
        return "—"
    transforms = ", ".join(f"{k} {v}" for k, v in row.augmentation.transforms())
    drawn = (f"{row.augmentation_views} views per image, features cached" if row.augmentation_views
             else "drawn every epoch")
    return f"{transforms} ({drawn})"


def _batch(study: Study, batch: int) -> str:
    """The row's batch: the global batch, and each replica's share when the strategy has several."""
    replicas = (study.provenance().get("compute") or {}).get("replicas", 1)
    return f"{batch} ({-(-batch // replicas)} per replica x {replicas})" if replicas > 1 else str(batch)


def prov_weights(study: Study, row: str) -> str:
    info = study.provenance()["weights"][row]
    if info["source"] == "random":
        start = "RANDOM"
    else:
        start = f"ImageNet (sha256 {info['sha256'][:12]}…)" if info.get("sha256") not in (None, "unknown") else "ImageNet"
    return f"`{info['init_from']}`, itself from {start}" if info.get("init_from") else start


def _layer(h: Any) -> str:
    if h.pool:
        return f"{h.pool} pool"
    if h.batch_norm:
        return "batch norm"
    if h.dropout is not None:
        return f"dropout {h.dropout:g}"
    return f"dense {h.dense}" + (f" {h.activation}" if h.activation else "")


def data(study: Study, sample: int = 12) -> pd.DataFrame:
    """Images per protocol, side and class, the class balance, and a sample of training images. A cross-validated
    protocol counts its first fold here (every fold is in the folds table of tlrepro.reports.protocols)."""
    rows = study.split[(study.split["fold"] == "") | (study.split["fold"] == "1")]
    counts = rows.groupby(["protocol", "side", "label"]).size().unstack("label", fill_value=0).reset_index()
    counts["protocol"] = [f"{p} (fold 1)" if study.cross_validated(p) else p for p in counts["protocol"]]
    order = {p: i for i, p in enumerate(study.protocols)} | {f"{p} (fold 1)": i for i, p in enumerate(study.protocols)}
    order |= {s: i for i, s in enumerate(SIDE_NAMES)}
    counts = counts.sort_values(["protocol", "side"], key=lambda c: c.map(order)).reset_index(drop=True)
    counts["side"] = counts["side"].map(SIDE_NAMES)
    counts["total"] = counts.drop(columns=["protocol", "side"]).sum(axis=1)
    show(table(counts, "Images per protocol, side and class"))
    data_warnings(study)
    primary = study.protocol()
    primary = primary[primary["fold"].isin(["", "1"])]
    title = "Class balance per split" + (f" (protocol {study.primary})" if len(study.protocols) > 1 else "")
    display(plots.class_balance(primary.rename(columns={"side": "split"}), title=title))
    train = primary[primary["side"] == "train"].drop_duplicates("path")
    display(plots.sample_grid([paths.PROJECT_ROOT / p for p in train["path"]], list(train["label"]), n=sample,
                              seed=study.seed, title="A sample of training images"))
    return counts


def paper_magnifications(study: Study) -> list[int]:
    """The magnifications the paper gives figures for (metric names ending in _40x, _100x, ...)."""
    names = {metric for row in study.paper.get("rows", {}).values() for metric in row}
    return sorted({int(m[1]) for name in names if (m := re.search(r"_(\d+)x$", name))})


def data_warnings(study: Study) -> pd.DataFrame:
    """What prepare and derive found odd about the study's data (data/index/<dataset>.warnings.json), and the
    magnifications the paper reports on that this run's data lacks, as one short table."""
    try:
        found, recorded = sanity.read_warnings(study.dataset), True
    except UserError as exc:
        note(f"**Data checks:** none recorded ({exc})")
        found, recorded = [], False
    records = [{"dataset": w["dataset"], "check": w["check"].replace("_", " "), "what": w["message"]} for w in found]
    wanted = paper_magnifications(study)
    present = set(study.split["magnification"].astype(int)) if "magnification" in study.split else set()
    if missing := [m for m in wanted if m not in present]:
        records.append({"dataset": study.dataset, "check": "magnifications the paper reports on",
                        "what": f"the paper reports on {lab.magnifications_text(wanted)}; this run's data has "
                                f"{lab.magnifications_text(present) or 'no magnification'}, so nothing at "
                                f"{lab.magnifications_text(missing)}"})
    frame = pd.DataFrame(records, columns=["dataset", "check", "what"])
    if len(frame):
        show(table(frame, "Data warnings (from prepare and derive: odd or missing data, named rather than guessed)"))
    elif recorded:
        note("**Data checks:** nothing odd found (magnifications, class folders, names against folders, "
             "stain normalization).")
    return frame


def leakage(study: Study) -> pd.DataFrame:
    """The audit of every protocol: duplicates, near duplicates, rotated/flipped copies and shared groups
    across sides, and how many evaluation images match a training image."""
    audit = fileio.read_json(paths.leakage_details_json(study.id), f"leakage audit: run `dvc repro split@{study.id}`")
    records = []
    for protocol, report in audit.items():
        for pair, counts in report["by_sides"].items():
            records.append({"protocol": protocol, "sides": pair.replace("-", " / "),
                            "exact duplicates": counts["exact_duplicate_pairs"],
                            "near duplicates": counts["near_duplicate_pairs"],
                            "same up to rotation/flip": counts["dihedral_copy_pairs"],
                            **{k.replace("_", " "): v for k, v in counts.items() if k.endswith("s_shared")}})
    frame = pd.DataFrame(records)
    show(table(frame, f"Pairs of images across sides (perceptual hash distance ≤ "
                      f"{study.params.leakage.phash_max_distance} bits counts as near; a cross-validation's pairs and "
                      f"shared groups are summed over its folds)"))
    side = study.settings.evaluate_on
    matches = pd.DataFrame([{"protocol": p, f"{SIDE_NAMES[side]} images": r["images_per_side"].get(side, 0),
                             **{f"matching a training image ({k})": r["eval_images_matching_train"][side][k]
                                for k in MATCH_KINDS}}
                            for p, r in audit.items()])
    show(table(matches, f"{SIDE_NAMES[side].capitalize()} images that also appear, exactly or nearly, in training"))
    return frame


def figures_table(results: Mapping[str, Mapping[str, Any]], metric_names: Sequence[str] = (
        "accuracy", "precision", "recall", "f1", "roc_auc", "loss"), spread: Mapping[str, Any] | None = None,
        caption: str | None = None) -> pd.DataFrame:
    """Rows of figures with their intervals: `results` maps a row name to flat figures."""
    records = []
    for name, m in results.items():
        rec: dict[str, Any] = {"row": name, "images": m.get("n")}
        for k in metric_names:
            rec[k.replace("_", " ")] = ci(m.get(k), m.get(f"{k}_ci_low"), m.get(f"{k}_ci_high"))
        s = (spread or {}).get(name)
        if s:
            rec["accuracy over seeds"] = f"{s['mean']:.3f} ± {s['std']:.3f} (n={s['seeds']})"
        records.append(rec)
    frame = pd.DataFrame(records)
    show(table(frame, caption))
    note(f"<small>{interval_note(results.values())}</small>")
    return frame


def interval_note(figures: Any) -> str:
    """How the intervals of a set of figures were made: the confidence, what was resampled, how often; or why
    there are none (too few patients)."""
    figures = [m for m in figures if m]
    first = figures[0] if figures else {}
    if not first.get("ci_resamples"):
        return ""
    unit = first.get("ci_unit", "image")
    if first.get("ci_note"):
        return f"No intervals: {first['ci_note']}."
    valid = min((m.get("roc_auc_ci_valid") or 0) for m in figures)
    resampled = "the images" if unit == "image" else f"whole {unit}s (a {unit}'s images are not independent)"
    return (f"Intervals: {first['ci_confidence']:.0%} percentile bootstrap over {resampled}, "
            f"{first['ci_resamples']:,} resamples (ROC AUC defined in at least {valid:,} of them).")


def paper_vs_ours(study: Study, ours: Mapping[str, Mapping[str, Any]], *,
                  spread: Mapping[str, Mapping[str, Any]] | None = None, metrics: Sequence[str] | None = None,
                  label: str = "") -> pd.DataFrame:
    """The paper's figures beside ours with intervals and seed spread, a figure, notes on every difference,
    and one line naming the paper's figures this run has nothing to set beside (e.g. absent magnifications)."""
    full = compare.compare(study.id, ours, metrics=metrics, spread=spread)
    frame = full[full["ours"].notna()].reset_index(drop=True)
    missing = full[full["ours"].isna()]
    randoms = study.provenance().get("random_init") or []
    shown = pd.DataFrame({
        "row": [r + (" (random init)" if r in randoms else "") for r in frame["row"]],
        "metric": frame["metric"].str.replace("_", " "), "paper": frame["paper"],
        "ours [CI]": [ci(o, lo, hi) for o, lo, hi in zip(frame["ours"], frame["ci_low"], frame["ci_high"], strict=True)],
        "ours − paper": [number(int(round(d)) if is_count(p) else d, signed=True)
                         for d, p in zip(frame["difference"], frame["paper"], strict=True)],
        "over seeds": [f"{m:.3f} ± {s:.3f}" if pd.notna(s) else "—" for m, s in zip(frame["seed_mean"], frame["seed_std"], strict=True)],
    })
    prov = study.provenance()
    if frame["seed_std"].isna().all():
        shown = shown.drop(columns="over seeds")
    else:
        shown = shown.rename(columns={"over seeds": f"over {prov['seed_kind']}"})
    side = study.settings.evaluate_on
    other = {r: s for r, s in zip(frame["row"], frame["side"], strict=True) if isinstance(s, str) and s != side}
    sides = f"{SIDE_NAMES[side]} side" + "".join(f"; {r} on the {SIDE_NAMES[s]} side" for r, s in other.items())
    show(table(shown, f"The paper beside ours{(' — ' + label) if label else ''} (ours on the {sides})"))
    note(f"<small>{interval_note(ours.values())}</small>")
    rates = frame[frame["paper"] <= 1]  # counts (layers, parameters) are compared in the table only
    if len(rates):
        display(comparison_plots.paper_vs_ours(rates))
    notes = compare.difference_notes(frame, prov, study.params.evaluation.confidence) + compare.unmeasured_notes(missing)
    note("**Notes on every difference**\n\n" + "\n".join(f"- {n}" for n in notes))
    if len(study.protocols) == 1:  # a study with several protocols takes its sentence from all of them (evidence)
        sentence = compare.comparison_takeaway(study.id, frame, prov, study.params.evaluation.confidence)
        note(f"**Take-away:** {sentence}")
        update_display(Markdown(f"**Take-away:** {sentence}"), display_id=compare.takeaway_id(study.id))
    return full


def deviations(study: Study) -> pd.DataFrame:
    """Every way this run departs from the paper, with the reason."""
    frame = pd.DataFrame(compare.deviations(study.id, study.provenance(), compare.split_facts(study.split)),
                         columns=["what", "paper", "ours", "reason"])
    show(table(frame, "Deviations from the paper, and why"))
    return frame


def provenance(study: Study) -> pd.DataFrame:
    """Weights (source, sha256), data sizes per side, subset status and caps, and the run's identity (commit,
    DVC experiment, date, versions, hardware): what this run rests on."""
    prov = study.provenance()
    records = []
    for row, w in prov["weights"].items():
        records.append({"row": row, "weights": w["source"] + (f" (through `{w['init_from']}`)" if w.get("init_from") else ""),
                        "file": w.get("file", "—"),
                        "sha256": (w["sha256"][:16] + "…") if w.get("sha256") else "—",
                        "loaded from": w.get("from", "—")})
    show(table(pd.DataFrame(records), "Initial weights (sha256 shortened; the full digest is in each model card)"))
    sizes = pd.DataFrame([{"protocol": p, **{SIDE_NAMES[k]: v for k, v in s.items()}} for p, s in prov["sides"].items()])
    show(table(sizes, "Images per side"))
    note("<small>Rows of the split file: dihedral views count as images; a cross-validation's sides are summed over "
         "its folds.</small>")  # as a caption it wrapped to the narrow table's width
    facts = {
        "dataset": prov["dataset"], "paper's dataset": prov["paper_dataset"] or "not named by the paper",
        "images in our dataset": number(prov["images"]),
        "images used": number(prov.get("images_in_split", prov["images"])),
        "images in the published dataset": number(prov["published_images"]) if prov["published_images"] else "—",
        "subset of the published set": ("yes" if prov["published_images"] and prov["images"] < prov["published_images"]
                                        else "no"),
        "scale.max_images_per_class": prov["max_images_per_class"] or "none",
        "scale.max_epochs": prov.get("max_epochs") or "none",
        "epochs run, where capped": epoch_caps_text(prov) or "none capped",
        "seed": prov["seed"],
        "ran on": compute_text(prov.get("compute")),
        **identity.text(prov.get("run")),
    }
    show(table(pd.DataFrame({"fact": list(facts), "value": [str(v) for v in facts.values()]}), "This run"))
    return sizes


def epoch_caps_text(prov: dict[str, Any]) -> str:
    """'VGG16: 2 of 40, MobileNetV2: 2 of the grid's 10, 20, …': the epochs each capped row ran, of how many."""
    return ", ".join(f"{r}: {c['ours']} of {c['paper']}" for r, c in (prov.get("capped_epochs") or {}).items())


def compute_text(plan: dict[str, Any] | None) -> str:
    """'mirrored over 2 replicas (GPU:0, GPU:1: NVIDIA H200 (cc 9.0) x2), mixed_float16, XLA auto' and the like."""
    if not plan:
        return "—"
    where = ", ".join(d.rsplit("/", 1)[-1].replace("device:", "") for d in plan["devices"])
    gpus = "; ".join(plan.get("gpus") or []) or "no GPU"
    return (f"{plan['strategy']} strategy, {plan['replicas']} replica(s) ({where}; {gpus}); precision "
            f"{plan['precision']}; XLA {plan['jit_compile']}")


def accuracy_by_group(study: Study, results: Any, by: str = "magnification") -> pd.DataFrame:
    """Image-level and patient-level accuracy (mean over patients of each patient's accuracy) per `by` value,
    for every row and protocol, with bootstrap intervals that resample patients."""
    group = study.unit
    e = study.params.evaluation
    parts = []
    for (protocol, name), r in results.items():
        correct = predicted_positive(r.probs, r.metrics["threshold"]).astype(int) == study.labels(r.frame)
        grouped = metrics.grouped_accuracy(r.frame.assign(**{group: r.frame["group"]}), correct, group=group,
                                           by=by if by in r.frame else None,
                                           seed=study.seed, resamples=e.bootstrap_resamples, confidence=e.confidence)
        # a subset holding every image is the row's own figure: the interval its evaluation gave, not a second one
        whole = grouped["images"] == len(r.frame)
        for column, key in (("image", "accuracy"), (group, f"{group}_accuracy")):
            grouped.loc[whole, f"{column}_ci_low"] = r.metrics.get(f"{key}_ci_low")
            grouped.loc[whole, f"{column}_ci_high"] = r.metrics.get(f"{key}_ci_high")
        parts.append(grouped.assign(protocol=protocol, model=name))
    out = pd.concat(parts, ignore_index=True)
    listed = out
    if out["subset"].nunique() == 2:  # one value of `by` in the data: its rows repeat the "all" rows
        only = out.loc[out["subset"] != "all", "subset"].iloc[0]
        listed = out[out["subset"] != "all"]
        note(f"The data hold one {by} ({only}): its figures are the whole run's.")
    shown = pd.DataFrame({
        "protocol": listed["protocol"],
        "model": [m + (" (random init)" if m in study.random_init() else "") for m in listed["model"]],
        by: listed["subset"], "images": listed["images"],
        f"{group}s": listed[f"{group}s"],
        "image-level accuracy": [ci(v, lo, hi) for v, lo, hi in zip(listed["image_accuracy"], listed["image_ci_low"],
                                                                     listed["image_ci_high"], strict=True)],
        f"{group}-level accuracy": [ci(v, lo, hi) for v, lo, hi in zip(
            listed[f"{group}_accuracy"], listed[f"{group}_ci_low"], listed[f"{group}_ci_high"], strict=True)],
    })
    show(table(shown, f"Image-level and {group}-level accuracy per {by} ({group}-level: the mean over {group}s of each "
                      f"{group}'s accuracy; intervals resample {group}s, and need at least {metrics.MIN_GROUPS})"))
    return out
