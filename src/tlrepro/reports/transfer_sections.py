"""Report sections of a multi-level transfer study with stain normalization and squeeze-and-excitation blocks
(wang2024): the stain step before and after, the architecture and what of it trains, and the pretraining step."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
from IPython.display import display
from PIL import Image

from tlrepro.core import fileio, paths
from tlrepro.data.derive import reference_image, stain_report_csv
from tlrepro.data.index import read_index
from tlrepro.data.stain import StainNormalizer
from tlrepro.modeling import backbones, blocks, models
from tlrepro.reports.protocols import pretraining_curve
from tlrepro.reports.sections import note, show, table
from tlrepro.results import plots
from tlrepro.studies import base
from tlrepro.studies.base import Study


def stain_preview(study: Study, n: int = 4) -> pd.DataFrame:
    """A few images before and after the stain step, and with the other method; how many kept their colours."""
    derived = fileio.read_json(paths.derived_json(study.dataset), "derived dataset record")
    reference = reference_image(read_index(derived["from"]), derived["stain"]["reference"], "derived")
    index = read_index(study.dataset)
    sample = index.sample(n=min(n, len(index)), random_state=study.seed)
    method = derived["stain"]["method"]
    panels = {"original": [np.asarray(Image.open(p).convert("RGB")) for p in sample["source_path"]],
              f"{method} (used)": [np.asarray(Image.open(p).convert("RGB")) for p in sample["path"]]}
    other = "reinhard" if method == "macenko" else "macenko"
    alternative = StainNormalizer(other, reference)
    panels[other] = [alternative.normalize(img).image for img in panels["original"]]
    display(plots.image_rows(panels, titles=list(sample["magnification"].map(lambda m: f"{m}X")),
                             reference=reference, title="Stain normalization: before and after"))
    report = pd.read_csv(stain_report_csv(study.dataset), keep_default_na=False)
    fell_back = report[~report["normalized"].astype(str).str.lower().eq("true")]
    note(f"**{len(report) - len(fell_back):,} of {len(report):,} images normalized**; {len(fell_back):,} kept their "
         f"original colours (too little tissue, or the method failed on them)"
         + (": " + "; ".join(f"{r.source.rsplit('/', 1)[-1]} ({r.reason})" for r in fell_back.head(5).itertuples())
            if len(fell_back) else "."))
    return report


def _backbone(study: Study, row: Any) -> Any:
    """The row's backbone as its training starts (from its pretraining entry for `init_from`), with the row's
    freeze policy applied."""
    return base.build(study, row, study.seed).backbone


def architecture(study: Study) -> pd.DataFrame:
    """Per row: SE blocks, how many of them train under the freeze policy, their weights and the increase over
    the plain backbone, beside the paper's Table 4; then what every other SE placement would add."""
    records, plain_count, reduction = [], None, 16
    for row in study.rows:
        backbone = _backbone(study, row)
        se_layers = [layer for layer in backbone.layers if isinstance(layer, blocks.SqueezeExcitation)]
        se_weights = sum(models.parameter_count(layer) for layer in se_layers)
        total = models.parameter_count(backbone)
        if plain_count is None or not se_layers:
            plain_count = total - se_weights
        reduction = row.se.reduction if row.se else reduction
        records.append({
            "model": row.name, "start": row.init_from or row.weights,
            "trains": (f"from {row.trainable_from}" if row.trainable_from else
                       "all layers" if row.trainable_layers == "all" else f"last {row.trainable_layers} layers"),
            "SE blocks": len(se_layers), "SE blocks trained": sum(1 for layer in se_layers if layer.trainable),
            "SE weights": se_weights, "backbone parameters": total,
            "increase over the plain backbone": f"{se_weights / (total - se_weights):+.2%}" if se_layers else "—",
            "paper's Table 4": (study.paper.get("table4_parameters") or {}).get(row.name, "—")})
    frame = pd.DataFrame(records)
    show(table(frame, "The three models: SE blocks, and what trains"))
    for rec in records:
        idle = rec["SE blocks"] - rec["SE blocks trained"]
        if rec["SE blocks"] and idle:
            note(f"**{rec['model']}:** {idle} of its {rec['SE blocks']} SE blocks sit in the frozen part of the network "
                 f"({rec['trains']} trains) and stay exact identities: they start as identities and nothing updates "
                 f"them. Only the {rec['SE blocks trained']} in the trainable part can learn.")
    plain = backbones.build_backbone(study.rows[0].backbone, study.rows[0].image_size, "random")
    candidates = pd.DataFrame([{"SE placement": label, "SE weights": n, "increase": f"{n / plain.count_params():+.2%}"}
                               for label, n in blocks.placement_counts(plain, reduction).items()])
    show(table(candidates, f"What each SE placement adds to a plain {study.rows[0].backbone} (reduction {reduction})"))
    paper = study.paper.get("table4_parameters") or {}
    if paper.get("DenseNet") and paper.get("DenseNet-SE"):
        rise = paper["DenseNet-SE"] / paper["DenseNet"] - 1
        note(f"The paper's Table 4 prints {paper['DenseNet']} for DenseNet and {paper['DenseNet-SE']} for DenseNet-SE "
             f"({rise:+.1%}; units unclear). No placement of standard SE blocks at reduction {reduction} adds that much "
             "to DenseNet121: after every dense layer's new features (ours) adds under 1 %, after each block's output "
             "about 5 %, after every concatenation about 43 %; nor is the paper's plain count DenseNet121's "
             f"{plain_count:,} parameters with a binary head. The paper's network is therefore not recoverable from "
             "its counts: we keep the placement its text describes (in the dense blocks and behind the transitions).")
    return frame


def pretraining(study: Study) -> pd.DataFrame | None:
    """The pretraining step of every `init_from` row: data, epochs, validation figure, and its curve."""
    frames = []
    for row in [r for r in study.rows if r.init_from]:
        card = json.loads(paths.card_of(paths.pretrained_model(row.init_from)).read_text())
        t, m = card["training"], card["metrics"]
        frame = pd.DataFrame([{
            "entry": row.init_from, "dataset": card["data"]["dataset"], "classes": ", ".join(card["classes"]),
            "split": card["data"].get("split", "—"),
            "images (train/val)": f"{card['data']['sides'].get('train', 0)}/{card['data']['sides'].get('val', 0)}",
            "epochs run": t["epochs_run"], "weights of epoch": t["best_epoch"], "training s": t.get("seconds"),
            "validation accuracy": f"{m['accuracy']:.3f}" + (
                f" [{m['accuracy_ci_low']:.3f}, {m['accuracy_ci_high']:.3f}]" if m.get("accuracy_ci_low") is not None
                else "")}])
        show(table(frame, f"Pretraining on {card['data']['dataset']} ({row.init_from})"))
        groups = m.get("ci_groups") or m.get(f"{m.get('ci_unit')}s")
        if m.get("accuracy_ci_low") is not None:
            note("<small>The interval resamples " + (
                f"the validation side's {groups} groups ({card['data'].get('split', '')}): an image's rotated and "
                "flipped copies are not independent.</small>" if groups else "validation images.</small>"))
        pretraining_curve(card, row.init_from)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else None
