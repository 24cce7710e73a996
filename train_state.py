"""What a checkpoint carries beside Lightning's own state, so that a resumed run continues the
interrupted one exactly: the run's metadata, the skipped-step counters, and every worker's
random number generators (torch, CUDA, Python, NumPy).

    on_save_checkpoint -> save_train_state(module, checkpoint)
    on_load_checkpoint -> load_train_state(module, checkpoint)
    on_train_start     -> resume_train_start(module)     # RNGs and the learning rate, after Lightning's restore

Lightning restores the weights, optimizer, scheduler, loops and the training loader's position
itself; these hooks are the rest. Kept out of module.py, which holds the step: nothing here
takes part in the maths of an update.
"""
from __future__ import annotations

import random

import numpy as np
import torch


def rng_states() -> dict:
    """This process's random number generators' states, in types a weights-only load accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states = {"torch": torch.get_rng_state(), "python": random.getstate(),
              "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    """Put back what rng_states() returned (CUDA's only where this process has CUDA)."""
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_train_state(module, checkpoint: dict) -> None:
    """Into a checkpoint being written: the run's metadata, the skipped-step counters, and every
    worker's RNG states, so a resumed run draws what this one would have."""
    checkpoint["run_metadata"] = {**module.metadata, "training_type": module.config.run.training_type}
    checkpoint["nonfinite_steps"] = {"streak": module._nonfinite_streak, "total": module._nonfinite_total}
    states = rng_states()
    world = module.trainer.world_size
    if world > 1:     # every worker saves (Lightning calls this hook on all ranks)
        gathered = [None] * world
        torch.distributed.all_gather_object(gathered, states)
        checkpoint["rng_states"] = gathered
    else:
        checkpoint["rng_states"] = [states]


def load_train_state(module, checkpoint: dict) -> None:
    """From a checkpoint being resumed: the counters now, this worker's RNG states (or the first
    worker's, when the run had fewer) at training start."""
    counts = checkpoint.get("nonfinite_steps", {})
    module._nonfinite_streak, module._nonfinite_total = counts.get("streak", 0), counts.get("total", 0)
    states = checkpoint.get("rng_states") or [None]
    rank = module.global_rank
    # Applied when training starts (after Lightning's restore, which may draw numbers).
    module._rng_to_restore = states[rank] if rank < len(states) else states[0]
    module._resumed = True


def resume_train_start(module) -> None:
    """At the start of a resumed run's training: the saved RNG states, and the learning rate of
    this run's schedule at the saved step."""
    if not module._resumed:
        return
    module._resumed = False
    if module._rng_to_restore is not None:
        set_rng_states(module._rng_to_restore)
        module._rng_to_restore = None
    # The optimizer restored the learning rate of the saved step under the saved run's
    # schedule; the schedule of this run (its length may differ: a larger --max-steps)
    # decides it from here on. Unchanged when the schedule is the same.
    sched = module.lr_schedulers()
    lrs = [base * rule(sched.last_epoch) for base, rule in zip(sched.base_lrs, sched.lr_lambdas)]
    for group, lr in zip(sched.optimizer.param_groups, lrs):
        group["lr"] = lr
    sched._last_lr = lrs
