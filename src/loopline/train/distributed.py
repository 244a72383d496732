"""Data-parallel training: one LightGBM or XGBoost model from row shards on Ray Train workers.

``train_bundle(..., distributed=Distributed(workers=4))`` fits the preprocessing in the
calling process, as always (category vocabularies and fill values must be the same for
every row, so they are learned from all of them), then splits the encoded matrix into
``workers`` contiguous row shards, puts each in Ray's object store and starts a Ray Train
worker group (``ray.train.lightgbm.LightGBMTrainer`` or
``ray.train.xgboost.XGBoostTrainer``). Each worker reads only its own shard and joins one
training run:

- LightGBM: ``tree_learner='data'`` with ``pre_partition``, and the network parameters
  Ray Train gives (``ray.train.lightgbm.get_network_params()``): per-shard histograms
  are summed over the network at every split.
- XGBoost: the ``hist`` method inside the collective (rabit) context Ray Train sets up:
  quantile sketches and gradient histograms are merged across workers.

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
import itertools
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from loopline.errors import ConfigError, LooplineError, TrainingError
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
    """How to train data-parallel on Ray Train workers (see the module docstring).

    Parameters
    ----------
    workers
        Ray Train workers; the training rows are split into this many contiguous shards.
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


def _train_shard(config: dict[str, Any]) -> bytes | None:
    """One Ray Train worker: its shard, one collective training run, rank 0's model file."""
    import ray
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    x, y = ray.get(config["shards"][rank])
    train = _lightgbm_shard if config["kind"] == LightGBMModel.kind else _xgboost_shard
    data = train(config, x, y)
    return data if rank == 0 else None


def _lightgbm_shard(config: dict[str, Any], x: FloatArray, y: FloatArray) -> bytes:
    import lightgbm as lgb
    from ray.train.lightgbm import get_network_params

    params = {**config["params"], **get_network_params()}
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


def _xgboost_shard(config: dict[str, Any], x: FloatArray, y: FloatArray) -> bytes:
    import xgboost as xgb

    # Ray Train's XGBoostConfig runs the worker function inside xgboost's collective
    # (rabit) context, so this is one training run over every worker's rows.
    params = dict(config["params"])
    names, categorical = list(config["names"]), set(config["categorical"])
    types = ["c" if name in categorical else "q" for name in names]
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


# -- Ray ------------------------------------------------------------------------------------


def _import_ray() -> Any:
    try:
        import ray
        import ray.train
    except ImportError as exc:
        raise ConfigError(
            "Distributed training needs Ray Train: pip install 'loopline[ray]', or train on "
            "one node (distributed=None).",
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
    # Ray Train would wait for CPUs the cluster does not have rather than fail.
    total = float(ray.cluster_resources().get("CPU", 0.0))
    if total < settings.cpus:
        raise TrainingError(
            f"Distributed training with {settings.workers} workers of "
            f"{settings.cpus_per_worker} CPU(s) needs {settings.cpus} CPUs, but the Ray "
            f"cluster has {total:g}. Use fewer workers (or CPUs per worker), or add nodes.",
            workers=settings.workers,
        )


def _failure(exc: BaseException) -> str:
    """The first worker's error, or Ray Train's own, in one line."""
    failures = getattr(exc, "worker_failures", None)
    if isinstance(failures, dict) and failures:
        rank, error = sorted(failures.items())[0]
        detail = " ".join(str(error).split()) or type(error).__name__
        return f"worker {rank}: {detail[:2000]}"
    return " ".join(str(exc).split())[:2000] or type(exc).__name__


def _run(
    ray: Any,
    kind: str,
    config: dict[str, Any],
    settings: Distributed,
) -> bytes:
    from ray.train import RunConfig, ScalingConfig

    scaling = ScalingConfig(
        num_workers=int(settings.workers),
        resources_per_worker={"CPU": float(settings.cpus_per_worker)},
    )
    # Nothing is checkpointed; Ray Train keeps its run state here, removed afterwards.
    storage = tempfile.mkdtemp(prefix="loopline-train-")
    run = RunConfig(name=f"loopline-{kind}-{uuid.uuid4().hex[:8]}", storage_path=storage)
    try:
        with warnings.catch_warnings():
            # Ray Data's default context, built when Ray Train first needs it, warns
            # about its own deprecated defaults: not ours to fix, and fatal under -W error.
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray\.data\.")
            trainer_class: Any
            if kind == LightGBMModel.kind:
                from ray.train.lightgbm import LightGBMTrainer

                trainer_class = LightGBMTrainer
            else:
                from ray.train.xgboost import XGBoostTrainer

                trainer_class = XGBoostTrainer
            # Rank 0's return value comes back as result.return_value (Ray Train 2.5x+).
            trainer = trainer_class(
                _train_shard, train_loop_config=config, scaling_config=scaling, run_config=run
            )
            result = trainer.fit()
    except LooplineError:
        raise
    except Exception as exc:  # Ray Train's TrainingFailedError and what it wraps
        raise TrainingError(
            f"Distributed {kind} training on {settings.workers} Ray workers failed "
            f"({_failure(exc)}). Check the model's parameters and the training rows; "
            "'ray status' shows the cluster, and the same model trains on one node with "
            "distributed=None.",
            kind=kind,
        ) from exc
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    data = getattr(result, "return_value", None)
    if not isinstance(data, bytes | bytearray) or not data:
        raise TrainingError(
            f"Distributed {kind} training finished without a model from worker 0 (got "
            f"{type(data).__name__}). This Ray version may not return training results "
            "(Ray Train 2.5x or later does); train on one node with distributed=None.",
            kind=kind,
        )
    return bytes(data)


# -- the entry point ------------------------------------------------------------------------


def check_supported(model: ModelAdapter) -> LightGBMModel | XGBoostModel:
    """``model`` if it can train data-parallel, else ``TrainingError`` saying what can."""
    if not isinstance(model, LightGBMModel | XGBoostModel):
        raise TrainingError(
            f"{type(model).__name__} cannot train distributed: Ray Train data-parallel "
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
    """A fitted copy of ``model`` (same class and parameters), trained on Ray Train workers.

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
            "shards": shards,
        }
        data = _run(ray, native.kind, config, distributed)
    return type(model).from_bytes(data, **model.to_params())
