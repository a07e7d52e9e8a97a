"""What exactly is trained, shown before the results: each row's built Keras model (layers, trainable and frozen
parameters), its compile settings and its training schedule, and one row's training written out as plain Keras
code a reader can copy.

Everything is read off the objects the row runner builds and compiles (`base.build`, `training.optimizer_of`,
`training.callbacks_of`), never restated, so the page cannot drift from what runs.
"""

from __future__ import annotations

import gc
from typing import Any

import pandas as pd
from IPython.display import Markdown, display

from tlrepro.core.config import Row
from tlrepro.reports.sections import note, show, table
from tlrepro.studies.base import Study


def loss_name(classes: tuple[str, ...]) -> str:
    """The loss `training.compile_model` uses: one sigmoid unit for two classes, else softmax."""
    return "binary_crossentropy" if len(classes) == 2 else "sparse_categorical_crossentropy"


def metric_code(classes: tuple[str, ...]) -> str:
    """The accuracy metric `training.compile_model` uses (binary: P >= 0.5 is malignant, as in every report)."""
    return ("training.BinaryAccuracy()" if len(classes) == 2
            else 'keras.metrics.SparseCategoricalAccuracy(name="accuracy")')


def learning_rates(study: Study, row: Row) -> list[float]:
    """The row's learning rate, or every rate of the study's grid (lin2024)."""
    if row.learning_rate is not None:
        return [row.learning_rate]
    return list(study.settings.grid.learning_rates) if study.settings.grid else []


def optimizer_code(row: Row, learning_rate: float) -> str:
    """The optimizer `training.optimizer_of` makes, as a Keras expression."""
    from tlrepro.modeling import training

    optimizer = training.optimizer_of(row, learning_rate)
    config = optimizer.get_config()
    args = [f"learning_rate={float(config['learning_rate']):g}"]
    if config.get("momentum"):
        args.append(f"momentum={config['momentum']:g}")
    return f"keras.optimizers.{type(optimizer).__name__}({', '.join(args)})"


def callbacks_code(row: Row) -> list[str]:
    """The callbacks `training.callbacks_of` makes, as Keras expressions with the row's arguments."""
    made = []
    for spec, name in ((row.early_stopping, "EarlyStopping"), (row.reduce_lr, "ReduceLROnPlateau")):
        if spec is not None:
            args = ", ".join(f"{k}={v!r}" for k, v in spec.model_dump().items())
            made.append(f"keras.callbacks.{name}({args})")
    return made


def epochs_text(study: Study, row: Row) -> str:
    if row.epochs:
        run = study.epochs(row)
        return f"{run}" + (f" (paper {row.epochs}, capped)" if run < row.epochs else "")
    grid = study.settings.grid
    budgets = ", ".join(str(e) for e in grid.epochs) if grid else "?"
    capped = study.params.scale.max_epochs
    return f"grid cells of {budgets}" + (f", each capped at {capped}" if capped else "")


def schedule(study: Study, row: Row) -> dict[str, str]:
    """Compile settings and training schedule of one row, as the row runner applies them."""
    rates = learning_rates(study, row)
    optimizer = (optimizer_code(row, rates[0]) if len(rates) == 1
                 else f"{optimizer_code(row, rates[0]).split('(')[0]}(learning_rate=grid: "
                      f"{', '.join(f'{r:g}' for r in rates)})")
    augmentation = ", ".join(f"{k} {v}" for k, v in row.augmentation.transforms()) if row.augmentation else "none"
    if row.augmentation and row.augmentation_views:
        augmentation += f" ({row.augmentation_views} views per image, the frozen part run once on each)"
    elif row.augmentation:
        augmentation += " (a fresh draw every epoch, in training only)"
    return {
        "optimizer": optimizer, "loss": loss_name(study.classes),
        "metric": "accuracy (malignant when P >= 0.5)", "epochs": epochs_text(study, row),
        "batch size": str(row.batch_size), "callbacks": ", ".join(callbacks_code(row)) or "none",
        "augmentation": augmentation,
        "starts from": (f"row `{row.start_from}`'s trained model" if row.start_from
                        else f"pretraining entry `{row.init_from}`" if row.init_from else f"{row.weights} weights"),
    }


def layer_table(model: Any) -> pd.DataFrame:
    """`model.summary(show_trainable=True)` as a table whose trained/frozen split is counted per weight: Keras's
    summary marks a backbone "Y" as soon as the backbone object is trainable, even with every layer inside it
    frozen. The backbone is one line (its layers would fill pages)."""
    from tlrepro.modeling import models

    records = []
    for layer in model.layers:
        total, trainable = models.parameter_count(layer), models.trainable_count(layer)
        shape = tuple(layer.output.shape) if hasattr(layer, "output") else None
        records.append({"layer": layer.name, "type": type(layer).__name__,
                        "output shape": str(shape).replace("None", "batch") if shape else "—",
                        "parameters": f"{total:,}", "trained": f"{trainable:,}", "frozen": f"{total - trainable:,}"})
    return pd.DataFrame(records)


def parameter_counts(model: Any) -> dict[str, int]:
    from tlrepro.modeling import models

    total, trainable = models.parameter_count(model), models.trainable_count(model)
    return {"parameters": total, "trainable": trainable, "frozen": total - trainable}


def show_models(study: Study) -> pd.DataFrame:
    """For every row: its model as built for training (freeze policy applied), the summary with trainable and
    frozen parameters, and its compile settings and schedule. Returns one line per row of the same facts."""
    from tlrepro.studies import base

    records = []
    for row in study.rows:
        classifier = base.build(study, row, seed=study.seed)
        counts = parameter_counts(classifier.model)
        facts = schedule(study, row)
        display(Markdown(f"### {row.name}: {row.backbone}{' + SE blocks' if row.se else ''}"))
        note(f"**{counts['parameters']:,} parameters:** {counts['trainable']:,} trained, {counts['frozen']:,} frozen"
             f" (backbone: {freeze_text(row)}).")
        show(table(layer_table(classifier.model), f"{row.name}: the model, layer by layer (as model.summary)"))
        show(table(pd.DataFrame([facts]).T.reset_index().set_axis(["setting", "value"], axis=1),
                   f"{row.name}: compile settings and training schedule"))
        records.append({"row": row.name, **counts, **facts})
        del classifier
        gc.collect()
    return pd.DataFrame(records)


def freeze_text(row: Row) -> str:
    if row.trainable_from:
        return f"every layer from `{row.trainable_from}` on trains"
    if row.trainable_layers == "all":
        return "every layer trains"
    return f"its last {row.trainable_layers} layers train" if row.trainable_layers else "frozen"


def training_code(study: Study, row: Row | None = None, protocol: str | None = None) -> str:
    """One row's training as plain Keras code over the package's own builders and data pipeline: what the row
    runner does on the plain path (the whole model on images every epoch). The pipeline gets the same fit by
    running a frozen part once and fitting the rest on its cached outputs."""
    row = row or study.rows[0]
    protocol = protocol or study.primary
    rate = learning_rates(study, row)[0]
    epochs = study.epochs(row) if row.epochs else min(study.settings.grid.epochs)
    if not row.epochs and study.params.scale.max_epochs:
        epochs = min(epochs, study.params.scale.max_epochs)
    callbacks = callbacks_code(row)
    cell = " (one cell of the grid)" if not row.epochs else ""
    if row.start_from:
        start = f"# `{row.name}` continues row `{row.start_from}`'s trained model; here it starts afresh\n"
    else:
        start = ""
    return f'''import keras
from tlrepro.data.tfdata import image_dataset
from tlrepro.modeling import training
from tlrepro.studies import base

{start}row = run.row({row.name!r})
classifier = base.build(run, row, seed={study.seed})  # {row.backbone}: {freeze_text(row)}; the head trains
model = classifier.model
model.compile(optimizer={optimizer_code(row, rate)},{cell}
              loss={loss_name(study.classes)!r}, metrics=[{metric_code(study.classes)}])
train, val = run.part("train", {protocol!r}), run.part("val", {protocol!r})
history = model.fit(
    image_dataset(train, {row.image_size}, {row.batch_size}, labels=training.targets(run.labels(train), model),
                  shuffle=True, seed={study.seed}),
    validation_data=image_dataset(val, {row.image_size}, {row.batch_size},
                                  labels=training.targets(run.labels(val), model)),
    epochs={epochs},
    callbacks=[{", ".join(callbacks)}])
'''


def show_training_code(study: Study) -> str:
    """The first row's training call on the page, as code to copy into a cell of this notebook."""
    code = training_code(study)
    note(f"**How one row is trained**, as plain Keras code you can paste into a cell of this notebook (it uses "
         f"`run`, opened above). It trains `{study.rows[0].name}` on the `{study.primary}` protocol the way the "
         f"pipeline does; the pipeline reaches the same fit faster where it can, by running the frozen part of the "
         f"network once and fitting the rest on its cached outputs.")
    display(Markdown(f"```python\n{code}```"))
    return code
