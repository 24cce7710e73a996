"""Where a run's checkpoints are and what they were trained with: local run folders
(<run>/checkpoints/last.ckpt, best.ckpt), Ray runs (<run>/checkpoint_<date-time>/checkpoint.ckpt)
and single files, local or s3://.

    ckpt = find_checkpoint("runs/sft-demo", best=True)     # best.ckpt where --save-best kept one
    config = saved_config(ckpt)                            # the flags it was trained with
    has_checkpoints("runs/sft-demo")                       # a new run must not write over these

Only storage paths here, never a model: models.py loads what these find.
"""
from __future__ import annotations

import storage
from errors import ConfigError, first_sentence

RAY_CHECKPOINT_FILE = "checkpoint.ckpt"      # the file name Ray's RayTrainReportCallback writes


def ray_checkpoint_names(entries: list[str]) -> list[str]:
    """Ray's checkpoint_<date-time> folders among a run folder's entries, oldest first."""
    return sorted(e for e in entries if e.startswith("checkpoint_") and not e.endswith(".json"))


def is_run_checkpoint_dir(path: str) -> bool:
    """checkpoints/ of a local run or checkpoint_<date-time>/ of a Ray run: its parent is the run folder."""
    name = storage.basename(path)
    return name == "checkpoints" or name.startswith("checkpoint_")


def run_of(ckpt: str) -> str | None:
    """The run folder a checkpoint file belongs to, or None for a file outside one."""
    folder = storage.parent(ckpt)
    return storage.parent(folder) if is_run_checkpoint_dir(folder) else None


def find_checkpoint(path: str, best: bool = False) -> str:
    """A .ckpt file, a run folder (its checkpoints/last.ckpt, or for a Ray run its latest
    checkpoint_<date-time>/checkpoint.ckpt) or one Ray checkpoint folder; local or a URL.
    With `best` (loading a finished run as a model), a run folder's checkpoints/best.ckpt
    (--save-best) is taken where it exists."""
    ckpt = str(path)
    try:
        if storage.isdir(ckpt):
            entries = storage.listdir(ckpt)
            ray_checkpoints = ray_checkpoint_names(entries)
            if "checkpoints" in entries:                 # a local run folder
                ckpt = storage.join(ckpt, "checkpoints", "last.ckpt")
                best_ckpt = storage.join(storage.parent(ckpt), "best.ckpt")
                if best and storage.exists(best_ckpt):
                    ckpt = best_ckpt
            elif RAY_CHECKPOINT_FILE in entries:         # one Ray checkpoint folder
                ckpt = storage.join(ckpt, RAY_CHECKPOINT_FILE)
            elif ray_checkpoints:                        # a Ray run folder: its latest checkpoint
                ckpt = storage.join(ckpt, ray_checkpoints[-1], RAY_CHECKPOINT_FILE)
            else:
                ckpt = storage.join(ckpt, "last.ckpt")
        found = storage.exists(ckpt)
    except Exception as e:  # noqa: BLE001 - credentials or network errors from a remote store
        raise ConfigError(f"Checkpoint {path} cannot be reached: {str(e).splitlines()[0].rstrip('.')}.") from None
    if not found:
        raise ConfigError(f"Checkpoint {path} does not exist "
                          f"(give a .ckpt file or a run folder holding checkpoints/last.ckpt).")
    return ckpt


def has_checkpoints(run: str) -> bool:
    """Whether a run folder holds a complete checkpoint (a hidden temporary file is what a
    killed first save left, and does not count)."""
    entries = storage.listdir(run)
    return bool(ray_checkpoint_names(entries)) or any(e.endswith(".ckpt") for e in
                                                      storage.listdir(storage.join(run, "checkpoints")))


def read_checkpoint(ckpt: str):
    """The checkpoint's contents (storage.load_torch: a local file memory-mapped, a URL read
    whole with retries), or a ConfigError for a corrupt or foreign file."""
    try:
        return storage.load_torch(ckpt)
    except Exception as e:  # noqa: BLE001 - a corrupt or foreign file
        raise ConfigError(f"Checkpoint {ckpt} cannot be read: {first_sentence(e)}.") from None


def saved_config(ckpt: str) -> dict:
    """The resolved config a checkpoint was trained with (config.yaml beside it, else its hparams)."""
    import yaml
    run = run_of(ckpt)
    beside = storage.join(run, "config.yaml") if run is not None else None
    if beside is not None and storage.exists(beside):
        return yaml.safe_load(storage.read_text(beside)) or {}
    return dict(read_checkpoint(ckpt).get("hyper_parameters", {}))
