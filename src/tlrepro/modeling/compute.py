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
import socket
import threading
import time
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
    check_cluster(settings.worker_timeout_s)  # MultiWorkerMirroredStrategy itself would wait for ever
    _patch_keras_multi_worker()
    return tf.distribute.MultiWorkerMirroredStrategy(), "multi_worker"


def cluster_of(raw: str | None) -> tuple[list[str], str]:
    """(every address of the cluster, this task's own address) from a TF_CONFIG value; a UserError naming what is
    missing or malformed otherwise."""
    fix = ("give every worker a TF_CONFIG such as {\"cluster\": {\"worker\": [\"host1:port\", \"host2:port\"]}, "
           "\"task\": {\"type\": \"worker\", \"index\": 0}} (see the README), or set compute.strategy: auto")
    if not raw or not raw.strip():
        raise UserError(f"params.yaml `compute.strategy` is multi_worker, but TF_CONFIG is not set: {fix}.")
    try:
        config = json.loads(raw)
    except ValueError as exc:
        raise UserError(f"TF_CONFIG is not valid JSON ({exc}): {fix}.") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not cluster or not all(
            isinstance(v, list) and v and all(isinstance(a, str) for a in v) for v in cluster.values()):
        raise UserError(f"TF_CONFIG has no `cluster` mapping each task type to a list of host:port addresses: {fix}.")
    if not isinstance(task, dict) or task.get("type") not in cluster:
        raise UserError(f"TF_CONFIG's `task` must name this process's type ({', '.join(cluster)}) and index: {fix}.")
    index, members = task.get("index"), cluster[task["type"]]
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(members):
        raise UserError(f"TF_CONFIG's task index {index!r} is not one of 0..{len(members) - 1} (its cluster lists "
                        f"{len(members)} {task['type']} address(es)): {fix}.")
    addresses = [address for group in cluster.values() for address in group]
    for address in addresses:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UserError(f"TF_CONFIG address `{address}` is not host:port: {fix}.")
    return addresses, members[index]


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


CHECK = b"tlrepro-worker-check"  # what a worker's check says to another's, and hears back while that one checks


class _OwnPort:
    """This worker's port, held while it checks the others: it answers each check with CHECK and notes which
    worker (by its TF_CONFIG address) reached it. Closed before TensorFlow's server takes the port."""

    def __init__(self, address: str) -> None:
        _, port = _split(address)
        self.reached_by: set[str] = set()
        self.socket = socket.socket(socket.AF_INET6 if socket.has_dualstack_ipv6() else socket.AF_INET)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.socket.family == socket.AF_INET6:
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            self.socket.bind(("", port))
            self.socket.listen(64)
            self.socket.settimeout(0.1)
        except OSError as exc:
            self.socket.close()
            raise UserError(f"TF_CONFIG gives this worker the address {address}, but port {port} cannot be opened "
                            f"here ({exc.strerror or exc}): stop what holds it (a worker left from an earlier run?) or "
                            f"give this worker another port in every worker's TF_CONFIG.") from None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._answer, name="tlrepro-worker-check", daemon=True)
        self._thread.start()

    def _answer(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.socket.accept()
            except OSError:  # the 0.1 s timeout (TimeoutError is one), or the socket closed
                continue
            with conn:
                try:
                    conn.settimeout(1.0)
                    said = conn.recv(512).decode("utf-8", "replace").split()
                    conn.sendall(CHECK + b"\n")
                except OSError:
                    continue
                if len(said) == 2 and said[0] == CHECK.decode():
                    self.reached_by.add(said[1])

    def __enter__(self) -> _OwnPort:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2.0)
        self.socket.close()


def _probe(address: str, own: str, timeout: float) -> tuple[str | None, bool]:
    """(None, whether it is itself still checking) when `address` accepts a connection within `timeout` seconds;
    (why not, False) otherwise. A worker past its check (its TensorFlow server listening) does not say CHECK."""
    try:
        with socket.create_connection(_split(address), timeout=max(timeout, 0.05)) as conn:
            conn.settimeout(1.0)
            try:
                conn.sendall(CHECK + b" " + own.encode() + b"\n")
                heard = conn.recv(64)
            except OSError:
                heard = b""
            return None, heard.startswith(CHECK)
    except socket.gaierror as exc:
        return f"its host cannot be resolved: {exc.strerror or exc}", False
    except TimeoutError:
        return "no answer", False
    except OSError as exc:
        return exc.strerror or str(exc), False


def check_cluster(timeout_s: float, raw: str | None = None) -> None:
    """Check TF_CONFIG and that every other address of the cluster accepts a TCP connection within `timeout_s`,
    before any kernel or TensorFlow server starts (MultiWorkerMirroredStrategy would wait for ever, silently);
    otherwise a UserError naming the first address that did not answer.

    This worker's own address is not connected to: nothing listens there before its TensorFlow server starts.
    Instead its port is held open during the check (which also shows it is free), and workers that check at the
    same time wait until each has reached the other, so none moves on and closes its port before the others
    have seen it. A worker already past its check is simply reached. The others may start later: they are
    retried until the timeout (compute.worker_timeout_s)."""
    addresses, own = cluster_of(os.environ.get("TF_CONFIG") if raw is None else raw)
    others = list(dict.fromkeys(a for a in addresses if a != own))
    deadline = time.monotonic() + timeout_s
    answered: dict[str, bool] = {}  # address -> still checking when it answered
    reasons: dict[str, str] = {}
    with _OwnPort(own) as port:
        while True:
            for address in others:
                if address not in answered:
                    reason, checking = _probe(address, own, min(1.0, max(0.05, deadline - time.monotonic())))
                    if reason is None:
                        answered[address] = checking
                    else:
                        reasons[address] = reason
            silent = [a for a in others if a not in answered]
            unreached = [a for a in others if answered.get(a) and a not in port.reached_by]
            if not silent and not unreached:
                return
            if time.monotonic() >= deadline:
                if silent:
                    raise UserError(f"TF_CONFIG: {silent[0]} did not answer within {timeout_s:g} s ({reasons[silent[0]]}): "
                                    f"start `tlrepro run` on every worker (each with its own task index), check that "
                                    f"the address is right and its port open, or raise compute.worker_timeout_s.")
                raise UserError(f"TF_CONFIG: {unreached[0]} answers, but did not reach this worker at {own} within "
                                f"{timeout_s:g} s: open port {_split(own)[1]} here to the other workers, and give "
                                f"every worker the same cluster in TF_CONFIG.")
            time.sleep(0.1)


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
