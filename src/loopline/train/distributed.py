"""Data-parallel training: one LightGBM or XGBoost model from row shards on Ray workers.

``train_bundle(..., distributed=Distributed(workers=4))`` fits the preprocessing in the
calling process, as always (category vocabularies and fill values must be the same for
every row, so they are learned from all of them), then splits the encoded matrix into
``workers`` contiguous row shards and puts each in Ray's object store. The workers' CPUs
are reserved together (a placement group: the workers of one run wait for each other on
the network, so they start together or not at all), and one Ray task per worker reads
only its own shard and joins one training run:

- LightGBM: ``tree_learner='data'`` with ``pre_partition`` and LightGBM's own network
  (``machines``: an address and free port found on each worker's node first): per-shard
  histograms are summed over the network at every split.
- XGBoost: the ``hist`` method inside xgboost's collective, with a tracker started in the
  calling process: quantile sketches and gradient histograms are merged across workers.

This is what Ray Train's ``LightGBMTrainer`` and ``XGBoostTrainer`` do, without their
controller and worker-group actors, whose start cost 40 to 50 seconds per fit on two
cores (decision 0024). A failed worker fails the fit with its own error, and the others,
which would wait for it forever, are cancelled.

Rank 0 returns its model file (every rank holds the same model) and the adapter reads
it as it reads a saved one, so the bundle has the usual format and predicts like any
other. The model is close to, not the same as, one trained on one node: see "Distributed
training" in docs/training.md for why and by how much.

Ray is imported only here, when a distributed fit starts, so loopline imports without it.
A Ray connection this process already has is used and left open; otherwise a cluster
is started on this machine for the fit (``address=None``) or joined (``'ray://...'``),
and stopped or left afterwards.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from loopline.data.parallel import ONE_THREAD
from loopline.errors import ConfigError, TrainingError
from loopline.train.adapters import (
    LightGBMModel,
    ModelAdapter,
    XGBoostModel,
    check_names,
    check_target,
)

__all__ = ["DATA_PARALLEL_LEARNERS", "Distributed", "check_supported", "fit_distributed"]

DATA_PARALLEL_LEARNERS = ("data", "data_parallel", "voting", "voting_parallel")
"""LightGBM ``tree_learner`` values that train on row shards (``'data'`` is the default);
``params={'tree_learner': 'voting'}`` chooses voting-parallel instead."""

# LightGBM writes every parameter into the model text; these only say where the
# workers listened, differ on every run and would put host addresses in the bundle.
_NETWORK_LINES = ("[machines: ", "[local_listen_port: ", "[machine_list_filename: ")

A = TypeVar("A", bound=ModelAdapter)
FloatArray = npt.NDArray[np.float64]


def _positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise TrainingError(
            f"The {name!r} parameter of Distributed must be an integer of at least 1. "
            f"Got {value!r}.",
            parameter=name,
        )


@dataclass(frozen=True)
class Distributed:
    """How to train data-parallel on Ray workers (see the module docstring).

    Parameters
    ----------
    workers
        Ray workers; the training rows are split into this many contiguous shards.
    cpus_per_worker
        CPUs each worker reserves, and the threads LightGBM or XGBoost uses on it (in
        place of the adapter's ``num_threads``, which still sets prediction threads).
    min_rows
        Train distributed only from this many rows on; a smaller training set is fitted
        in this process as usual. None: always distributed.
    address
        Where Ray runs when this process is not connected yet: None starts a cluster on
        this machine (``workers * cpus_per_worker`` CPUs) for the fit; ``'ray://host:port'``
        or ``'auto'`` joins one.

    Examples
    --------
    >>> settings = Distributed(workers=4, min_rows=1_000_000)
    >>> settings.applies(10_000), settings.applies(5_000_000)
    (False, True)
    >>> Distributed(workers=0)
    Traceback (most recent call last):
    ...
    loopline.errors.TrainingError: The 'workers' parameter of Distributed must be an integer
    of at least 1. Got 0.
    """

    workers: int = 2
    cpus_per_worker: int = 1
    min_rows: int | None = None
    address: str | None = None

    def __post_init__(self) -> None:
        _positive("workers", self.workers)
        _positive("cpus_per_worker", self.cpus_per_worker)
        if self.min_rows is not None:
            _positive("min_rows", self.min_rows)
        if self.address is not None and (not isinstance(self.address, str) or not self.address):
            raise TrainingError(
                "The 'address' parameter of Distributed must be None (a Ray cluster on this "
                f"machine), 'auto' or 'ray://host:port'. Got {self.address!r}.",
                parameter="address",
            )

    @property
    def cpus(self) -> int:
        """CPUs the worker group reserves in all."""
        return int(self.workers) * int(self.cpus_per_worker)

    def applies(self, rows: int) -> bool:
        """Whether a training set of ``rows`` rows is trained distributed."""
        return self.min_rows is None or rows >= self.min_rows


# -- what each library's workers run --------------------------------------------------------


def _lightgbm_params(model: LightGBMModel, settings: Distributed) -> dict[str, Any]:
    params = model.training_params()
    learner = params.get("tree_learner", "data")
    if learner not in DATA_PARALLEL_LEARNERS:
        raise TrainingError(
            f"LightGBMModel(params={{'tree_learner': {learner!r}}}) cannot train on row "
            f"shards; distributed training needs one of {', '.join(DATA_PARALLEL_LEARNERS)} "
            "(or no tree_learner: 'data' is the default).",
            parameter="params",
        )
    return {
        **params,
        "tree_learner": learner,
        # Each worker's rows are its own: no LightGBM-side re-partitioning.
        "pre_partition": True,
        "num_threads": int(settings.cpus_per_worker),
    }


def _xgboost_params(model: XGBoostModel, settings: Distributed) -> dict[str, Any]:
    return {**model.training_params(), "nthread": int(settings.cpus_per_worker)}


def _train_shard(
    config: dict[str, Any], rank: int, network: dict[str, Any], shard: tuple[Any, Any]
) -> bytes | None:
    """One worker: its shard, one collective training run, rank 0's model file."""
    x, y = shard
    if config["kind"] == LightGBMModel.kind:
        data = _lightgbm_shard(config, rank, network, x, y)
    else:
        data = _xgboost_shard(config, rank, network, x, y)
    return data if rank == 0 else None


def _lightgbm_shard(
    config: dict[str, Any], rank: int, network: dict[str, Any], x: FloatArray, y: FloatArray
) -> bytes:
    import lightgbm as lgb

    machines = network["machines"]
    params = {
        **config["params"],
        "machines": ",".join(f"{host}:{port}" for host, port in machines),
        "local_listen_port": machines[rank][1],
        "num_machines": len(machines),
    }
    dataset = lgb.Dataset(
        x,
        label=y,
        feature_name=list(config["names"]),
        categorical_feature=list(config["categorical"]),
        params=params,
    )
    booster = lgb.train(params, dataset, num_boost_round=int(config["rounds"]))
    text = str(booster.model_to_string())
    return "".join(
        line for line in text.splitlines(keepends=True) if not line.startswith(_NETWORK_LINES)
    ).encode()


def _xgboost_shard(
    config: dict[str, Any], rank: int, network: dict[str, Any], x: FloatArray, y: FloatArray
) -> bytes:
    import xgboost as xgb

    params = dict(config["params"])
    names, categorical = list(config["names"]), set(config["categorical"])
    types = ["c" if name in categorical else "q" for name in names]
    # Inside the communicator (the tracker the caller started), the sketches and the
    # gradient histograms are merged over every worker: one training run.
    with xgb.collective.CommunicatorContext(**network["tracker"], dmlc_task_id=str(rank)):
        matrix = xgb.DMatrix(
            x,
            label=y,
            feature_names=names,
            feature_types=types,
            enable_categorical="c" in types,
            nthread=int(params["nthread"]),
        )
        booster = xgb.train(params, matrix, num_boost_round=int(config["rounds"]))
    return bytes(booster.save_raw("json"))


def _listen_address() -> tuple[str, int]:
    """This worker's node address and a port free on it (LightGBM listens there)."""
    import socket

    ray: Any = importlib.import_module("ray")

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("", 0))
        port = int(probe.getsockname()[1])
    return str(ray.util.get_node_ip_address()), port


# -- Ray ------------------------------------------------------------------------------------


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(
            "Distributed training needs Ray: pip install 'loopline[ray]', or train on one "
            "node (distributed=None).",
        ) from exc
    return ray


@contextlib.contextmanager
def _connected(ray: Any, settings: Distributed) -> Iterator[None]:
    """Ray as this process has it, or a cluster started (or joined) for this fit only."""
    if ray.is_initialized():
        yield
        return
    try:
        if settings.address is None:
            # "local": a new cluster, even where 'ray start' left one running here.
            ray.init(
                address="local",
                num_cpus=settings.cpus,
                include_dashboard=False,
                log_to_driver=False,
            )
        else:
            ray.init(address=settings.address, log_to_driver=False)
    except (ConnectionError, TimeoutError, RuntimeError) as exc:
        raise TrainingError(
            f"Cannot connect to Ray at {settings.address or 'a new local cluster'}: {exc}. "
            "Check that the cluster runs ('ray status' on its head node), or leave "
            "address=None to start one on this machine.",
        ) from exc
    try:
        yield
    finally:
        ray.shutdown()


def _check_capacity(ray: Any, settings: Distributed) -> None:
    # The workers' CPUs are reserved together; a cluster without them would wait forever.
    total = float(ray.cluster_resources().get("CPU", 0.0))
    if total < settings.cpus:
        raise TrainingError(
            f"Distributed training with {settings.workers} workers of "
            f"{settings.cpus_per_worker} CPU(s) needs {settings.cpus} CPUs, but the Ray "
            f"cluster has {total:g}. Use fewer workers (or CPUs per worker), or add nodes.",
            workers=settings.workers,
        )


def _failure(exc: BaseException) -> str:
    """A worker's error in one line: what it raised, not Ray's wrapping of it."""
    cause = getattr(exc, "cause", None)
    error = cause if isinstance(cause, BaseException) else exc
    detail = " ".join(str(error).split()) or type(error).__name__
    return detail[:2000]


@contextlib.contextmanager
def _reserved(ray: Any, settings: Distributed) -> Iterator[list[Any]]:
    """A placement group of one bundle per worker, and each bundle's scheduling strategy.

    The workers of one run start together or not at all (each waits for the others on
    the network), so their CPUs are reserved as one group before any of them starts.
    """
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    group = placement_group(
        [{"CPU": float(settings.cpus_per_worker)}] * int(settings.workers), strategy="PACK"
    )
    try:
        ray.get(group.ready())
        yield [
            PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=rank)
            for rank in range(int(settings.workers))
        ]
    finally:
        remove_placement_group(group)


@contextlib.contextmanager
def _network(ray: Any, kind: str, strategies: list[Any]) -> Iterator[dict[str, Any]]:
    """What the workers need to find each other: LightGBM's machine list (an address on
    each worker's node) or the address of an XGBoost tracker run here."""
    if kind == LightGBMModel.kind:
        probe = ray.remote(num_cpus=0, runtime_env=ONE_THREAD)(_listen_address)
        refs = [probe.options(scheduling_strategy=s).remote() for s in strategies]
        yield {"machines": ray.get(refs)}
        return
    from xgboost.tracker import RabitTracker

    tracker = RabitTracker(
        n_workers=len(strategies), host_ip=str(ray.util.get_node_ip_address()), sortby="task"
    )
    tracker.start()
    try:
        yield {"tracker": tracker.worker_args()}
    finally:
        tracker.free()


def _run(
    ray: Any,
    kind: str,
    config: dict[str, Any],
    shards: list[Any],
    settings: Distributed,
) -> bytes:
    train = ray.remote(runtime_env=ONE_THREAD)(_train_shard)
    with _reserved(ray, settings) as strategies, _network(ray, kind, strategies) as network:
        refs = [
            train.options(
                scheduling_strategy=strategy,
                num_cpus=float(settings.cpus_per_worker),
                max_retries=0,  # one rank alone cannot rejoin a run: the step is retried
                name=f"loopline:train[{rank}]",
            ).remote(config, rank, network, shards[rank])
            for rank, strategy in enumerate(strategies)
        ]
        pending = list(refs)
        try:
            # While the workers train, this process only waits: it imports the library
            # it reads their model with now (seconds, the first time in a process; a
            # model kind is the name of its library).
            importlib.import_module(kind)
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                ray.get(done[0])
        except Exception as exc:
            for ref in pending:
                ray.cancel(ref, force=True)  # the others wait for the failed one forever
            for ref in pending:  # collected, so that Ray does not log them as unhandled
                with contextlib.suppress(Exception):
                    ray.get(ref, timeout=30)
            raise TrainingError(
                f"Distributed {kind} training on {settings.workers} Ray workers failed "
                f"({_failure(exc)}). Check the model's parameters and the training rows; "
                "'ray status' shows the cluster, and the same model trains on one node "
                "with distributed=None.",
                kind=kind,
            ) from exc
        data = ray.get(refs[0])
    if not isinstance(data, bytes) or not data:
        raise TrainingError(
            f"Distributed {kind} training finished without a model from worker 0 (got "
            f"{type(data).__name__}).",
            kind=kind,
        )
    return data


# -- the entry point ------------------------------------------------------------------------


def check_supported(model: ModelAdapter) -> LightGBMModel | XGBoostModel:
    """``model`` if it can train data-parallel, else ``TrainingError`` saying what can."""
    if not isinstance(model, LightGBMModel | XGBoostModel):
        raise TrainingError(
            f"{type(model).__name__} cannot train distributed: data-parallel "
            "training is built for LightGBMModel and XGBoostModel only (a scikit-learn "
            "estimator has no way to merge what workers learn). Train it on one node "
            "(distributed=None), or use LightGBMModel or XGBoostModel.",
            parameter="model",
        )
    return model


def fit_distributed(
    model: A,
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    distributed: Distributed,
    feature_names: Sequence[str] | None = None,
    categorical: Sequence[str] = (),
) -> A:
    """A fitted copy of ``model`` (same class and parameters), trained on Ray workers.

    ``x``, ``y``, ``feature_names`` and ``categorical`` are as for ``ModelAdapter.fit``;
    ``model`` itself is not changed. Only LightGBM and XGBoost train data-parallel; a
    scikit-learn model raises ``TrainingError``, a missing Ray ``ConfigError``.
    """
    if not isinstance(distributed, Distributed):
        raise TrainingError(
            "The 'distributed' parameter must be a Distributed(workers=..., ...) or None. "
            f"Got {type(distributed).__name__}.",
            parameter="distributed",
        )
    native = check_supported(model)
    native.check_params()
    matrix = np.ascontiguousarray(np.asarray(x, dtype=np.float64))
    target = check_target(y, objective=native.objective)
    if matrix.ndim != 2 or matrix.shape[0] != target.shape[0]:
        raise TrainingError(
            f"x must be a 2-D matrix with one row per target value; got shape {matrix.shape} "
            f"for {target.shape[0]} targets.",
        )
    names = check_names("fit_distributed", matrix.shape[1], feature_names, categorical)
    if matrix.shape[0] < distributed.workers:
        raise TrainingError(
            f"{matrix.shape[0]} training rows cannot be split over {distributed.workers} "
            "workers; use fewer workers, or set min_rows so that small sets train on one node.",
            workers=distributed.workers,
        )
    params = (
        _lightgbm_params(native, distributed)
        if isinstance(native, LightGBMModel)
        else _xgboost_params(native, distributed)
    )
    ray = _import_ray()
    with _connected(ray, distributed):
        _check_capacity(ray, distributed)
        bounds = np.linspace(0, matrix.shape[0], distributed.workers + 1).astype(int)
        shards = [
            ray.put((matrix[start:stop], target[start:stop]))
            for start, stop in itertools.pairwise(bounds.tolist())
        ]
        config = {
            "kind": native.kind,
            "params": params,
            "rounds": int(native.num_rounds),
            "names": names,
            "categorical": tuple(categorical),
        }
        data = _run(ray, native.kind, config, shards, distributed)
    return type(model).from_bytes(data, **model.to_params())
