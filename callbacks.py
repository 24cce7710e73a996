"""The Lightning callbacks and logger train.py builds a run's Trainer from: TensorBoard with
retried flushes, the in-epoch checkpoint schedule and its writer, the data position kept in
every checkpoint (exact mid-epoch resume), the end-of-run count of storage retries, and the
fault-injection test hook (TRAINER_FAULT_INJECT)."""
from __future__ import annotations

import logging
import os

import storage
from config import Config

log = logging.getLogger("train")
FAULT_ENV = "TRAINER_FAULT_INJECT"


def tensorboard_logger(out: str):
    """Lightning's TensorBoardLogger writing to <out>/tensorboard, with its flushes to a remote
    store retried (storage.retrying). TensorBoard's S3 layer keeps the events in a local
    temporary file and re-uploads all of it at each flush, so a failed flush can simply be
    repeated and the event object on S3 is always whole. Lightning flushes after every logged
    step (logger.save), in the training loop's thread, where a retry can wait; the writer's own
    timed flush runs in its background thread, where one failure would end the thread and every
    later write, so for URLs it is put off (flush_secs of a year)."""
    from lightning.pytorch.loggers import TensorBoardLogger

    class RetryingTensorBoardLogger(TensorBoardLogger):
        def save(self):
            storage.retrying("Writing TensorBoard events to", self.log_dir, super().save)

        def finalize(self, status):
            if self._experiment is not None:     # the last flush, retried; closing flushes once more
                storage.retrying("Writing TensorBoard events to", self.log_dir, self._experiment.flush)
            super().finalize(status)

    remote = {"flush_secs": 365 * 24 * 3600} if storage.is_url(out) else {}
    return RetryingTensorBoardLogger(save_dir=out, name="", version="tensorboard", default_hp_metric=False, **remote)


class CheckpointSchedule:
    """When a checkpoint is due inside an epoch: every --checkpoint-every-n-steps optimizer
    steps, and at the step where --max-steps stops a run mid-epoch (so that checkpoint says
    "mid-epoch" and a resumed run with a larger --max-steps continues the epoch, rather than
    one written at the cut-short epoch's end, which marks the epoch done). At an epoch's last
    batch a due checkpoint waits for the epoch's end (after its validation)."""

    def __init__(self, c: Config):
        self.every = c.checkpoint.checkpoint_every_n_steps
        self.at_epoch_end = False       # a step checkpoint fell on the epoch's last batch
        self._before = None             # global_step when the batch started

    def begin(self, trainer) -> None:
        self._before = trainer.global_step

    def due(self, trainer, batch_idx: int) -> bool:
        step = trainer.global_step
        # A batch makes --num-iterations optimizer steps with grpo: due when it passes a multiple.
        before = step - 1 if self._before is None else self._before
        wanted = bool(self.every) and step // self.every > before // self.every
        stopping = 0 < trainer.max_steps <= step
        if batch_idx + 1 >= trainer.num_training_batches:
            self.at_epoch_end = self.at_epoch_end or wanted
            return False
        return wanted or stopping

    def validation_follows(self, trainer) -> bool:
        """Lightning validates after this batch (--val-check-interval counts batches across epochs)."""
        every = trainer.val_check_batch
        return (trainer.check_val_every_n_epoch is None and isinstance(every, int) and every > 0
                and (trainer.fit_loop.total_batch_idx + 1) % every == 0)

    def take_epoch_end(self) -> bool:
        due, self.at_epoch_end = self.at_epoch_end, False
        return due


def _step_checkpoint_class():
    from lightning.pytorch.callbacks import ModelCheckpoint

    class StepCheckpoint(ModelCheckpoint):
        """ModelCheckpoint (every --checkpoint-frequency epochs, plus last.ckpt) that also saves
        inside epochs as CheckpointSchedule says. Uses ModelCheckpoint's own save methods, so
        top-k pruning, last.ckpt and the crash-safe writer apply; a step saved once is not saved
        again at the epoch's end (ModelCheckpoint skips a global step already saved)."""

        def __init__(self, schedule: CheckpointSchedule, **kwargs):
            # At the epoch's end, after its validation, whether or not one ran: ModelCheckpoint's
            # default with --val-check-interval waits for a validation end, and an epoch ending
            # between validations (the run's last one included) was never saved.
            super().__init__(save_on_train_epoch_end=True, **kwargs)
            self.schedule = schedule
            self._after_validation = False

        def _save_now(self, trainer) -> None:
            if not self._should_skip_saving_checkpoint(trainer):
                candidates = self._monitor_candidates(trainer)
                self._save_topk_checkpoint(trainer, candidates)
                self._save_last_checkpoint(trainer, candidates)

        def _save_last_checkpoint(self, trainer, monitor_candidates):
            # last.ckpt right after the same step's checkpoint was written (every save of a local
            # run): a hard link to that file, not a second serialisation and write of the same
            # state (1.6 GB and about 4 s a save for SmolLM2-135M with its optimizer state).
            saved = self._last_checkpoint_saved
            if not (self.save_last and saved and not storage.is_url(saved) and trainer.world_size == 1
                    and self._last_global_step_saved == trainer.global_step and os.path.isfile(saved)):
                return super()._save_last_checkpoint(trainer, monitor_candidates)
            path = self.format_checkpoint_name(monitor_candidates, self.CHECKPOINT_NAME_LAST)
            if os.path.abspath(saved) != os.path.abspath(path):
                try:
                    storage.link_atomic(saved, path)
                except OSError:     # a file system without hard links: written, as Lightning does
                    return super()._save_last_checkpoint(trainer, monitor_candidates)
            previous, self.last_model_path = self.last_model_path, path
            if previous and self._should_remove_checkpoint(trainer, previous, path):
                self._remove_checkpoint(trainer, previous)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.schedule.begin(trainer)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if self.schedule.due(trainer, batch_idx):
                if self.schedule.validation_follows(trainer):
                    self._after_validation = True      # so the checkpoint holds that validation's state
                else:
                    self._save_now(trainer)

        def on_validation_end(self, trainer, pl_module):
            super().on_validation_end(trainer, pl_module)
            if self._after_validation and not trainer.sanity_checking:
                self._after_validation = False
                self._save_now(trainer)

        def on_train_epoch_end(self, trainer, pl_module):
            super().on_train_epoch_end(trainer, pl_module)
            if self.schedule.take_epoch_end():
                self._save_now(trainer)
    return StepCheckpoint


def step_checkpoint(schedule: CheckpointSchedule, **kwargs):
    return _step_checkpoint_class()(schedule, **kwargs)


def _data_position_class():
    import lightning as L

    class DataPosition(L.Callback):
        """The training loader's position in the epoch (collate_functions.ResumableLoader):
        advanced once a batch is trained, not when it is fetched; restored from the checkpoint
        before the resumed epoch's first batch. Lightning saves the loader's state itself (the fit
        loop's "combined_loader"), but restores it only when its train loader is set up after the
        checkpoint is loaded, and configure_optimizers (estimated_stepping_batches) sets it up before."""

        def __init__(self):
            self._state = None

        def on_load_checkpoint(self, trainer, pl_module, checkpoint):
            states = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {}).get("combined_loader")
            self._state = states[0] if states else None

        def on_train_start(self, trainer, pl_module):
            if self._state is not None:
                trainer.train_dataloader.load_state_dict(self._state)
                self._state = None

        def on_train_batch_end(self, trainer, *args):
            trainer.train_dataloader.batch_trained()
    return DataPosition


def data_position():
    return _data_position_class()()


def storage_retries():
    """At the end of training, the number of transient storage errors retried (each was logged
    as it happened): one log line, and the scalar storage/retries where the curves are. At
    on_train_end every checkpoint is written and the logger is still open."""
    import lightning as L

    class StorageRetries(L.Callback):
        def on_train_end(self, trainer, pl_module):
            if storage.retry_count:
                log.warning("storage: %d transient errors of the remote store were retried in this process",
                            storage.retry_count)
                if trainer.logger is not None:
                    trainer.logger.log_metrics({"storage/retries": storage.retry_count}, step=trainer.global_step)
    return StorageRetries()


class FaultInjected(RuntimeError):
    """The exception TRAINER_FAULT_INJECT's "raise" mode throws."""


FAULT_MODES = ("exit", "kill", "raise")


def fault_injection(spec: str):
    """Test hook: TRAINER_FAULT_INJECT="STEP:RANK:MODE:MARKER" stops worker RANK once STEP
    optimizer steps are done, after everything step STEP writes (its checkpoint, and at an
    epoch's end that epoch's validation and checkpoint), before the next batch starts. MODE:
    "exit" calls os._exit(1) as a crash would, "kill" sends the process SIGKILL, "raise" raises
    FaultInjected. It fires only while the file MARKER does not exist, and writes it first
    ("fault at step S"), so the resumed or Ray-restarted run goes on; that run's worker RANK
    appends "resumed at step R" at its start, so a test can count the steps lost, S - R.
    A STEP at or after the run's last step never fires."""
    import signal

    import lightning as L

    step, rank, mode, marker = spec.split(":", 3)
    if mode not in FAULT_MODES:
        raise ValueError(f"{FAULT_ENV} mode must be one of {', '.join(FAULT_MODES)} (got {mode!r}).")

    class FaultInjection(L.Callback):
        def on_train_start(self, trainer, pl_module):
            # Runs after a checkpoint is restored, so global_step is where the run continues.
            if trainer.global_rank == int(rank) and os.path.exists(marker):
                with open(marker, "a") as f:
                    f.write(f"resumed at step {trainer.global_step}\n")

        # The batch *start* hook: Lightning runs ModelCheckpoint's and Ray's report hooks after
        # this callback's at a batch's end, so firing there would pre-empt step STEP's checkpoint.
        def on_train_batch_start(self, trainer, *args):
            if trainer.global_step >= int(step) and trainer.global_rank == int(rank) and not os.path.exists(marker):
                with open(marker, "w") as f:
                    f.write(f"fault at step {trainer.global_step}\n")
                if mode == "exit":
                    os._exit(1)
                if mode == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise FaultInjected(f"{FAULT_ENV}: fault injected at step {trainer.global_step}")
    return FaultInjection()
