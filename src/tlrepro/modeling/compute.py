"""Where TensorFlow runs: one GPU or several (tf.distribute.MirroredStrategy), several machines
(MultiWorkerMirroredStrategy from TF_CONFIG), or the CPU exactly as before; mixed precision and XLA.

`activate(params.compute)` is called once per process before any model is built (tlrepro.studies.base.load_study
and the pretraining stage do it). It sets Keras's dtype policy and returns a `Plan`: the strategy, its devices and
replicas, the precision and whether models compile with XLA. Models are built and compiled inside
`plan.scope()`; `model.fit` and `predict` then spread every global batch over the replicas, so the batch sizes in
params stay the papers' global batches. `auto` on a CPU is the default strategy, float32 and no XLA: a laptop
run is byte for byte what it was.
"""

from __future__ import annotations

import json
import os
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from tlrepro.core.config import Compute
from tlrepro.core.errors import UserError

_plan: Plan | None = None


@dataclass
class Plan:
    strategy: Any  # a tf.distribute.Strategy
    name: str  # default | mirrored | multi_worker
    devices: list[str]
    precision: str  # float32 | mixed_float16 | mixed_bfloat16
    jit_compile: bool | str  # True, False, or "auto" (Keras's: XLA on a GPU when the model supports it)
    gpus: list[str] = field(default_factory=list)

    @property
    def replicas(self) -> int:
        return int(self.strategy.num_replicas_in_sync)

    @property
    def distributed(self) -> bool:
        return self.name != "default"

    def scope(self) -> AbstractContextManager:
        return self.strategy.scope()

    def per_replica_batch(self, global_batch: int) -> int:
        return max(1, -(-int(global_batch) // self.replicas))

    def describe(self) -> dict[str, Any]:
        """What every report's provenance says about where the run ran."""
        return {"strategy": self.name, "replicas": self.replicas, "devices": self.devices, "gpus": self.gpus,
                "precision": self.precision, "jit_compile": self.jit_compile}


def _gpu_names(tf: Any) -> list[str]:
    names = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        capability = details.get("compute_capability")
        names.append(f"{details.get('device_name', gpu.name)}" + (f" (cc {capability[0]}.{capability[1]})"
                                                                   if capability else ""))
    return names


def _fp16_gains(tf: Any) -> bool:
    """Float16 pays on GPUs with tensor cores (compute capability 7.0 or more) and nowhere else."""
    gpus = tf.config.list_physical_devices("GPU")
    return bool(gpus) and all((tf.config.experimental.get_device_details(g).get("compute_capability") or (0, 0))[0] >= 7
                              for g in gpus)


def _strategy(tf: Any, settings: Compute, gpus: int) -> tuple[Any, str]:
    wanted = settings.strategy
    if wanted == "auto":
        wanted = "mirrored" if gpus else "default"
    if wanted == "default":
        return tf.distribute.get_strategy(), "default"
    if wanted == "mirrored":  # every local GPU; with none, every logical CPU device the process configured
        devices = None if gpus else [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices), "mirrored"
    if not os.environ.get("TF_CONFIG"):
        raise UserError("params.yaml `compute.strategy` is multi_worker, but TF_CONFIG is not set: give every worker "
                        "a TF_CONFIG naming the cluster and its own index (see the README), or use auto.")
    try:
        json.loads(os.environ["TF_CONFIG"])
    except ValueError:
        raise UserError("TF_CONFIG is not valid JSON: it must name the cluster's workers and this task's index.") from None
    _patch_keras_multi_worker()
    return tf.distribute.MultiWorkerMirroredStrategy(), "multi_worker"


def _patch_keras_multi_worker() -> None:
    """Two fixes that let Keras 3.15's `fit` run under MultiWorkerMirroredStrategy (keras-team/keras#20585,
    tensorflow/tensorflow#72388; Keras is pinned, and tests/test_compute.py trains two workers to one device's
    result through them):

    - before training, `fit` peeks at one batch and averages it over the workers just to learn its shapes, a
      collective that fails on per-worker batches: the model is built from one batch of the undistributed data;
    - it averages each scalar log (the loss) over workers along axis 0, which a scalar does not have.
    """
    from keras import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer

    if getattr(tf_trainer, "_tlrepro_multi_worker", False):
        return
    reduce_per_replica = tf_trainer.reduce_per_replica

    def reduce_scalars_too(values: Any, strategy: Any, reduction: str = "auto") -> Any:
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(strategy):
            def mean(v: Any) -> Any:
                local = strategy.experimental_local_results(v)[0] if tf_trainer._is_per_replica_instance(v) else v
                return strategy.reduce("MEAN", v, axis=0 if len(getattr(local, "shape", ())) else None)
            return tree.map_structure(mean, values)
        return reduce_per_replica(values, strategy, reduction)

    maybe_symbolic_build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build

    def build_from_local_batch(self: Any, iterator: Any = None, data_batch: Any = None) -> None:
        if iterator is not None and tf_trainer._collective_all_reduce_multi_worker(self.distribute_strategy):
            batch = next(iter(iterator.data_adapter.get_tf_dataset().take(1)))
            with self.distribute_strategy.scope():
                self._symbolic_build(data_batch=batch)
            return
        maybe_symbolic_build(self, iterator=iterator, data_batch=data_batch)

    tf_trainer.reduce_per_replica = reduce_scalars_too
    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = build_from_local_batch
    tf_trainer._tlrepro_multi_worker = True


def activate(settings: Compute | None = None) -> Plan:
    """Choose and set up the strategy, dtype policy and XLA for this process (once; later calls return it)."""
    global _plan
    if _plan is not None:
        return _plan
    import keras
    import tensorflow as tf

    settings = settings or Compute()
    gpu_names = _gpu_names(tf)
    strategy, name = _strategy(tf, settings, len(gpu_names))
    precision = {"off": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16",
                 "auto": "mixed_float16" if _fp16_gains(tf) else "float32"}[settings.mixed_precision]
    keras.mixed_precision.set_global_policy(precision)
    jit = {"on": True, "off": False, "auto": "auto"}[settings.jit_compile]
    if name == "default":
        devices = [d.name for d in tf.config.list_logical_devices("GPU")[:1] or tf.config.list_logical_devices("CPU")[:1]]
    else:
        devices = list(strategy.extended.worker_devices)
    _plan = Plan(strategy, name, [str(d) for d in devices], precision, jit, gpu_names)
    return _plan


def current() -> Plan:
    """The active plan (the default one when nothing activated another: tests, interactive use)."""
    return _plan if _plan is not None else activate(Compute(strategy="default", mixed_precision="off", jit_compile="off"))


def reset() -> None:
    """Forget the plan and restore float32 (tests that try several plans in one process)."""
    global _plan
    _plan = None
    import keras

    keras.mixed_precision.set_global_policy("float32")
