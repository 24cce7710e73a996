"""--early-stopping-patience stops a run whose validation metric stalls, and the best
checkpoint (checkpoints/best.ckpt) is the one with the best validated value; loading the run
folder as a model takes it, resuming takes last.ckpt."""
import torch

import checkpoints
import flags
import train
from conftest import read_scalars


def test_early_stopping_stops_on_a_stall_and_keeps_the_best(tmp_path, capsys):
    # SFT at 1e-3 learns the bundled task within ~40 steps, then val/loss wobbles on a plateau.
    assert train.main(["--storage-path", str(tmp_path), "--name", "es", "--lr", "1e-3", "--max-steps", "300",
                       "--val-check-interval", "10", "--early-stopping-patience", "1", "--test-dataset-length", "16",
                       "--val-generations", "0", "--num-sanity-val-steps", "0", "--warmup-ratio", "0",
                       "--validate-before-training"]) == 0
    run = tmp_path / "es"
    val = read_scalars(run / "tensorboard")["val/loss"][1:]          # [0] is the starting model, step 0
    losses = [v for _, v in val]
    best = losses.index(min(losses))
    # It stopped at the first validation (patience 1) without a new minimum, long before 300 steps.
    assert len(losses) == best + 2 and val[-1][0] < 299
    assert losses[-1] >= losses[best] and losses == sorted(losses[:best + 1], reverse=True) + losses[best + 1:]
    best_ckpt = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    last_ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert best_ckpt["global_step"] == val[best][0] + 1 < last_ckpt["global_step"]
    assert checkpoints.find_checkpoint(str(run), best=True).endswith("best.ckpt")
    assert checkpoints.find_checkpoint(str(run)).endswith("last.ckpt")
    assert f"Best val/loss: {min(losses):.4g}" in capsys.readouterr().out


def test_monitor_flags_need_early_stopping_or_save_best(capsys):
    assert train.main(["--monitor", "val/loss"]) == 2
    assert "--monitor only applies with --early-stopping-patience or --save-best" in capsys.readouterr().err
    assert train.main(["--save-best", "--monitor", "loss"]) == 2
    assert "--monitor must name a validation metric" in capsys.readouterr().err
    assert train.main(["--early-stopping-patience", "2", "--use-ray"]) == 2
    assert "does not work with --use-ray yet" in capsys.readouterr().err
    assert flags.monitor_settings({"monitor": None, "monitor_mode": None, "training_type": "grpo"}) == ("val/reward", "max")
    assert flags.monitor_settings({"monitor": "val/edit_distance", "monitor_mode": None,
                                   "training_type": "sft"}) == ("val/edit_distance", "min")
