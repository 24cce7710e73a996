"""Numerical guard: a step whose loss is not finite is skipped (no update) and counted; a run
of --max-nonfinite-steps such steps stops the run with one sentence, and the checkpoint
written before is left as it was."""
import math

import torch

import losses
import train
from conftest import read_scalars


def nan_on_training_calls(monkeypatch, bad_calls: set):
    """Wrap the SFT loss so that the listed training calls (counted from 0; validation runs
    without gradients and is not counted) return a NaN loss."""
    real, calls = losses.LOSSES["sft"], [0]

    def loss(nll, mask, normalizer=None):
        out = real(nll, mask, normalizer)
        if torch.is_grad_enabled():
            if calls[0] in bad_calls:
                out.loss = out.loss * float("nan")
                out.nll_sum = out.nll_sum * float("nan")
            calls[0] += 1
        return out
    monkeypatch.setitem(losses.LOSSES, "sft", loss)


COMMON = ["--train-dataset-length", "16", "--test-dataset-length", "4", "--batch-size", "4", "--lr", "1e-3",
          "--val-generations", "0", "--num-sanity-val-steps", "0", "--log-every-n-steps", "1"]


def test_one_nan_step_is_skipped_and_counted(tmp_path, monkeypatch):
    nan_on_training_calls(monkeypatch, {1})                       # the second of 4 steps
    assert train.main([*COMMON, "--storage-path", str(tmp_path), "--name", "run"]) == 0
    s = read_scalars(tmp_path / "run" / "tensorboard")
    # The count is logged at every step: 0 at step 0, 1 from the skipped batch on.
    # Every batch logs (TensorBoard steps count batches): the skipped one its NaN loss and
    # gradient norm as they were, and the count of skipped steps from then on.
    assert [v for _, v in s["train/nonfinite_steps"]] == [0.0, 1.0, 1.0, 1.0]
    assert [math.isfinite(v) for _, v in s["train/loss"]] == [True, False, True, True]
    assert [math.isfinite(v) for _, v in s["train/grad_norm"]] == [True, False, True, True]
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def test_nan_steps_in_a_row_stop_the_run_and_keep_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    """Epoch 0 (steps 0-3) trains and is checkpointed; every step of epoch 1 is NaN, and the
    second in a row stops the run with --max-nonfinite-steps 2."""
    nan_on_training_calls(monkeypatch, set(range(4, 100)))
    code = train.main([*COMMON, "--storage-path", str(tmp_path), "--name", "run", "--max-epochs", "2",
                       "--max-nonfinite-steps", "2"])
    assert code == 2
    err = capsys.readouterr().err
    assert ("error: The loss or gradient was not finite for 2 steps in a row, the last at optimizer step 4 "
            "(batch 1 of epoch 1)") in err
    ckpts = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["epoch=0-step=4.ckpt", "last.ckpt"]
    ckpt = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 4 and all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
