"""Run train.py's training inside Ray Train (`--use-ray`): DDP or FSDP over Ray workers.

    python train.py --use-ray --num-workers 2 --strategy ddp ...              # a local Ray
    ray job submit --working-dir . -- python train.py --use-ray --num-workers 4 --use-gpu ...

Every worker runs the function train.py hands to `launch` (the same `fit` as a local run), with
Ray's Lightning strategy and environment. A user error (errors.UserError) raised in a worker
reaches the driver as the same error, one sentence, instead of Ray's wall of tracebacks. Checkpoints are reported to Ray every --checkpoint-frequency epochs and land in
<storage-path>/<name>/checkpoint_<date-time>/checkpoint.ckpt; Ray keeps --ckpt-to-keep of them and,
when a worker dies, restarts the workers from the latest (up to --max-failures times).
`ray.init()` joins the cluster of `ray job submit` (RAY_ADDRESS) or one started with
`ray start` on this machine, and otherwise starts a local one.
"""
from __future__ import annotations

import os
import re
import tempfile
from typing import Callable

import storage
from checkpoints import RAY_CHECKPOINT_FILE
from errors import UserError

REPO = os.path.dirname(os.path.abspath(__file__))
# How a worker's user error travels through Ray's exception wrapping: "UserError<DataError>: sentence".
USER_ERROR_FORMAT = "UserError<{name}>: {message}"
USER_ERROR_PATTERN = re.compile(r"UserError<(\w+)>: (.+)")
FORWARDED_ENV = ("AWS_ENDPOINT_URL", "S3_ENDPOINT", "AWS_DEFAULT_REGION", "TRAINER_FAULT_INJECT")


def lightning_parts(c, schedule):
    """(strategy, plugins, checkpoint-report callback) for a Lightning Trainer in a Ray worker;
    `schedule` (callbacks.CheckpointSchedule) says when a checkpoint is due inside an epoch."""
    import ray.train
    from ray.train.lightning import (RayDDPStrategy, RayFSDPStrategy, RayLightningEnvironment,
                                     RayTrainReportCallback)

    class ReportEveryN(RayTrainReportCallback):
        """Report metrics and a checkpoint to Ray every `every` epochs, at the last epoch, and
        inside epochs as `schedule` says (RayTrainReportCallback's epoch-end report, called
        there too); a step is reported once."""

        def __init__(self, every: int):
            super().__init__()
            self.every = every
            self._reported_step = None
            self._after_validation = False

        def _report(self, trainer, pl_module) -> None:
            if self._reported_step != trainer.global_step:
                self._reported_step = trainer.global_step
                super().on_train_epoch_end(trainer, pl_module)
                # Ray registers a reported checkpoint only at its next poll of the workers (every
                # 2 s); a worker killed before then takes the report with it, and Ray restarts from
                # an older checkpoint or from step 0 (measured: a kill 2 steps after a checkpoint
                # lost all 6 steps). Wait until it is registered, so a restart loses at most the
                # steps since (tests/test_ray.py).
                ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            schedule.begin(trainer)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if schedule.due(trainer, batch_idx):
                if schedule.validation_follows(trainer):
                    self._after_validation = True
                else:
                    self._report(trainer, pl_module)

        def on_validation_end(self, trainer, pl_module):
            if self._after_validation and not trainer.sanity_checking:
                self._after_validation = False
                self._report(trainer, pl_module)

        def on_train_epoch_end(self, trainer, pl_module):
            epoch = trainer.current_epoch + 1
            last = epoch >= trainer.max_epochs or (0 < trainer.max_steps <= trainer.global_step)
            if schedule.take_epoch_end() or epoch % self.every == 0 or last:
                self._report(trainer, pl_module)

    name = c.distributed.strategy
    if name in ("auto", "ddp"):
        strategy = RayDDPStrategy()
    elif name == "fsdp":
        strategy = RayFSDPStrategy(state_dict_type=c.distributed.state_dict_type)
    else:
        raise ValueError(f"unsupported strategy {name!r}")   # validate() refuses it first
    return strategy, [RayLightningEnvironment()], ReportEveryN(c.checkpoint.checkpoint_frequency)


def prepare(trainer, ckpt_path: str | None):
    """Ray's checks on the Trainer, and the checkpoint to start from: the one Ray restores
    after a failure, else --resume-from-checkpoint."""
    import ray.train
    from ray.train.lightning import prepare_trainer

    trainer = prepare_trainer(trainer)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        local = checkpoint.to_directory(tempfile.mkdtemp(prefix="restore-"))
        ckpt_path = os.path.join(local, RAY_CHECKPOINT_FILE)
    return trainer, ckpt_path


def _user_errors_tagged(worker: Callable[[dict], None]) -> Callable[[dict], None]:
    """Ray Train's train_loop_per_worker: `worker`, with a user error's class and sentence put
    where the driver finds them (`_raise_user_error`)."""
    def loop(c: dict) -> None:
        try:
            worker(c)
        except UserError as e:
            raise RuntimeError(USER_ERROR_FORMAT.format(name=type(e).__name__, message=str(e))) from None
    return loop


def _storage_for_ray(path: str):
    """(storage_path, storage_filesystem) for RunConfig: local paths absolute, URLs through
    the same fsspec filesystem (and endpoint) the rest of the trainer uses."""
    if not storage.is_url(path):
        return storage.absolute(path), None
    import pyarrow.fs
    fs = storage.filesystem(path)
    return path.split("://", 1)[1], pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))


def launch(c, worker: Callable[[dict], None]) -> dict:
    """Start (or join) Ray, run `worker(c.flat())` in every worker, and return the last reported metrics;
    `c` is a config.Config."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    started = not ray.is_initialized()
    if started:
        if "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ:
            ray.init()      # the driver of a `ray job submit`: the job's --working-dir ships the code
        else:
            # A local Ray (started here or by `ray start` on this machine): workers import the
            # trainer from this checkout. Endpoint settings and the fault-injection harness are
            # forwarded; credentials are not (a cluster started by `ray start` uses its own
            # environment, and `ray job submit` passes them in --runtime-env-json).
            env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
            ray.init(runtime_env={"env_vars": {"PYTHONPATH": str(REPO), **env}})
    c = c.replace(storage_path=storage.absolute(c.run.storage_path))    # flags.resolve did the model and data paths
    storage_path, filesystem = _storage_for_ray(c.run.storage_path)
    d = c.distributed
    scaling = ScalingConfig(num_workers=d.num_workers, use_gpu=d.use_gpu, accelerator_type=d.accelerator_type,
                            placement_strategy=d.placement_strategy)
    run_config = RunConfig(storage_path=storage_path, storage_filesystem=filesystem, name=c.run.name,
                           checkpoint_config=CheckpointConfig(num_to_keep=c.checkpoint.ckpt_to_keep),
                           failure_config=FailureConfig(max_failures=d.max_failures))
    # Workers get the flat form (a plain dict, what Ray's train_loop_config is) and rebuild the Config.
    trainer = TorchTrainer(_user_errors_tagged(worker), train_loop_config=c.flat(), scaling_config=scaling,
                           run_config=run_config)
    try:
        result = trainer.fit()
    except Exception as e:  # noqa: BLE001 - Ray wraps worker errors in its own types
        _raise_user_error(e)
        raise
    finally:
        if started:
            ray.shutdown()      # leave the process as we found it
    metrics = dict(result.metrics or {})
    if result.checkpoint is not None:
        metrics["checkpoint"] = result.checkpoint.path
    return metrics


def _raise_user_error(error: Exception) -> None:
    """A worker's one-sentence error becomes the driver's own, of the same class where the
    driver knows it (else UserError)."""
    found = USER_ERROR_PATTERN.search(str(error))
    if not found:
        return
    name, message = found.group(1), found.group(2).strip()
    classes = {cls.__name__: cls for cls in _subclasses(UserError)}
    try:
        user_error = classes.get(name, UserError)(message)
    except TypeError:       # a class whose constructor takes more than the sentence
        user_error = UserError(message)
    raise user_error from None


def _subclasses(cls: type) -> list[type]:
    return [cls] + [c for sub in cls.__subclasses__() for c in _subclasses(sub)]
