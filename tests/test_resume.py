"""Exact resume: a run stopped in the middle of an epoch and resumed from its checkpoint ends
at the weights of the same run left alone (to 1e-6, CPU, fixed seed), for every training
type; a run stopped by --max-steps and continued with a larger one equals the straight run;
a checkpoint records code version and data fingerprint, and resuming on other data is refused.

The stop: TRAINER_FAULT_INJECT's os._exit, raised as an exception in-process (fast) for each
training type, and a real os._exit in a subprocess for sft. Each run: 16 training rows (8 for
grpo), 4 steps an epoch, 2 epochs; checkpoints every 3 steps (3, 4 at epoch 0's end, 6); the
stop comes at step 7, so the resumed run starts at step 6, batch 2 of epoch 1's reshuffled order."""
import os
import subprocess
import sys

import pytest
import torch

import flags
import rewards
import train
from collate_functions import ResumableLoader, ResumableSampler
from conftest import REPO

TINY = ["--test-dataset-length", "4", "--val-generations", "0", "--num-sanity-val-steps", "0", "--lr", "1e-3",
        "--log-every-n-steps", "1", "--max-length", "128", "--max-epochs", "2"]
TYPES = {
    "sft": ["--train-dataset-length", "16", "--batch-size", "4"],
    "dpo": ["--train-dataset-length", "16", "--batch-size", "4"],
    "bt": ["--train-dataset-length", "16", "--batch-size", "4"],
    # 16 problems give about 30 verify and generate rows.
    "sft_verifier": ["--train-dataset-length", "16", "--batch-size", "8", "--verifier-eval-rows", "0"],
    # The base model never answers, nor stops, within 8 tokens: correctness and length would give
    # every completion of a prompt the same reward, zero advantages and no update. The test reward
    # "distinct" scores the sampled text itself, so the update depends on exactly what was sampled.
    "grpo": ["--train-dataset-length", "8", "--batch-size", "2", "--num-generations", "2", "--max-new-tokens", "8",
             "--reward-funcs", "correctness,distinct"],
}


@pytest.fixture(autouse=True)
def distinct_reward(monkeypatch):
    """A reward for the grpo runs here: the fraction of distinct characters in the completion."""
    def distinct(prompt, completion: str, reference, num_tokens: int, max_new_tokens: int) -> float:
        return len(set(completion)) / max(1, len(completion))
    monkeypatch.setitem(rewards.REWARD_FUNCTIONS, "distinct", distinct)


class Killed(BaseException):
    """What the fault injection's os._exit raises here instead of ending the test process."""


def argv(kind: str, storage, name: str) -> list[str]:
    return ["--training-type", kind, "--storage-path", str(storage), "--name", name, "--checkpoint-every-n-steps", "3",
            *TYPES[kind], *TINY]


def last(run_dir) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"] and a["epoch"] == b["epoch"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for name, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][name], value, rtol=0, atol=1e-6)


VARIANTS = [(kind, []) for kind in TYPES] + [
    # Accumulation, and validation every 3 steps: the checkpoints at steps 3 and 6 wait for it.
    ("sft", ["--batch-size", "2", "--accumulate-grad-batches", "2", "--val-check-interval", "3"])]


@pytest.mark.parametrize("kind,extra", VARIANTS, ids=[k + ("-accumulate-validate" if e else "") for k, e in VARIANTS])
def test_resumed_run_ends_at_the_weights_of_the_uninterrupted_run(kind, extra, tmp_path, monkeypatch):
    def argv_(name):
        return [*argv(kind, tmp_path, name), *extra]
    assert train.main(argv_("straight")) == 0
    straight = last(tmp_path / "straight")
    assert straight["global_step"] == 8

    def exit_(code):
        raise Killed(code)
    monkeypatch.setattr(os, "_exit", exit_)
    monkeypatch.setenv(train.FAULT_ENV, f"7:0:exit:{tmp_path / 'killed-once'}")
    with pytest.raises(Killed):
        train.main(argv_("stopped"))
    saved = last(tmp_path / "stopped")
    assert saved["global_step"] == 6 and saved["epoch"] == 1
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches": 2}]
    # The stopped run really diverged from the final weights: resuming has work to do.
    assert any(not torch.equal(v, straight["state_dict"][k]) for k, v in saved["state_dict"].items())

    monkeypatch.delenv(train.FAULT_ENV)
    assert train.main(["--resume-from-checkpoint", str(tmp_path / "stopped")]) == 0
    assert_same_weights(straight, last(tmp_path / "stopped"))
    resumed = last(tmp_path / "stopped")
    assert resumed["optimizer_states"][0]["state"][0]["step"] == straight["optimizer_states"][0]["state"][0]["step"]
    assert resumed["lr_schedulers"] == straight["lr_schedulers"]


def test_killed_process_resumes_exactly(tmp_path):
    """The same with a real crash: the fault injection's os._exit ends a train.py process at step 7."""
    assert train.main(argv("sft", tmp_path, "straight")) == 0
    marker = tmp_path / "killed-once"
    env = {**os.environ, train.FAULT_ENV: f"7:0:exit:{marker}", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "train.py", *argv("sft", tmp_path, "crashed")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and marker.exists(), proc.stderr[-3000:]
    assert last(tmp_path / "crashed")["global_step"] == 6
    assert train.main(["--resume-from-checkpoint", str(tmp_path / "crashed")]) == 0
    assert_same_weights(last(tmp_path / "straight"), last(tmp_path / "crashed"))


def test_max_steps_then_a_larger_max_steps_continues_the_epoch(tmp_path, capsys):
    """A run stopped by --max-steps 2 in the middle of epoch 0 (375 batches of the bundled SFT data)
    used to be marked as having finished the epoch, so --max-steps 4 ended at once at step 2. Now
    its checkpoint is taken at step 2, mid-epoch, and the continued run equals a straight 4-step
    run. The learning-rate schedule is planned for the --max-steps of each run and continues with
    the new one; here they agree on steps 0-1: warm-up max(1, round(0.05 * total)) = 1 step, then
    (total - s) / (total - 1), which is 1 at s = 1 for total 2 and 4 alike."""
    common = ["--storage-path", str(tmp_path), "--test-dataset-length", "2", "--val-generations", "0",
              "--num-sanity-val-steps", "0", "--max-length", "128"]
    assert train.main([*common, "--name", "r", "--max-steps", "2"]) == 0
    assert sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir()) == ["epoch=0-step=2.ckpt", "last.ckpt"]
    assert train.main(["--resume-from-checkpoint", str(tmp_path / "r"), "--max-steps", "4"]) == 0
    assert "Done: step 4." in capsys.readouterr().out
    assert train.main([*common, "--name", "straight", "--max-steps", "4"]) == 0
    assert_same_weights(last(tmp_path / "straight"), last(tmp_path / "r"))
    assert last(tmp_path / "r")["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 0, "batches": 4}]


def test_checkpoint_records_code_version_config_and_data_fingerprint(tmp_path, tokenizer):
    assert train.main(["--storage-path", str(tmp_path), "--name", "m", "--max-steps", "1", "--train-dataset-length",
                       "8", *TINY[:-2]]) == 0
    ckpt = last(tmp_path / "m")
    meta = ckpt["run_metadata"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert meta["code_version"] == (head or "unknown") and meta["training_type"] == "sft"
    config, _ = flags.parse_config(["--train-dataset-length", "8", "--max-length", "128"])
    loaders, _, _, _ = train.build_data(flags.resolve(config), tokenizer)
    assert meta["data_fingerprint"] == train.data_fingerprint(loaders["train"].dataset)
    assert len(meta["data_fingerprint"]) == 64
    assert ckpt["hyper_parameters"]["train_dataset_length"] == 8
    assert {"torch", "python", "numpy"} <= set(ckpt["rng_states"][0])


def test_resuming_on_other_data_is_refused_unless_forced(tmp_path, capsys):
    run = tmp_path / "m"
    assert train.main(["--storage-path", str(tmp_path), "--name", "m", "--max-steps", "2", "--train-dataset-length",
                       "16", "--batch-size", "4", *TINY[:-2]]) == 0
    files = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    config = (run / "config.yaml").read_bytes()
    capsys.readouterr()
    code = train.main(["--resume-from-checkpoint", str(run), "--max-steps", "4", "--train-dataset-length", "12"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"error: Checkpoint {run / 'checkpoints' / 'last.ckpt'} was trained on different data")
    assert err[0].endswith("resume anyway with --force-resume.") and err[0].count(". ") == 0
    # Nothing of the run was touched.
    assert {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()} == files
    assert (run / "config.yaml").read_bytes() == config

    assert train.main(["--resume-from-checkpoint", str(run), "--max-steps", "4", "--train-dataset-length", "12",
                       "--force-resume"]) == 0
    # Position 2 of epoch 0 kept; the 12 rows make 3 batches, so the epoch (and the run) ends at step 3.
    assert last(run)["global_step"] == 3


def test_training_type_mismatch_is_refused(tmp_path, capsys):
    assert train.main(["--storage-path", str(tmp_path), "--name", "m", "--max-steps", "1", "--train-dataset-length",
                       "8", *TINY[:-2]]) == 0
    capsys.readouterr()
    assert train.main(["--resume-from-checkpoint", str(tmp_path / "m"), "--training-type", "dpo"]) == 2
    assert "is a sft checkpoint; it cannot resume a dpo run" in capsys.readouterr().err


def test_flag_values(capsys):
    assert train.main(["--checkpoint-every-n-steps", "0"]) == 2
    assert "--checkpoint-every-n-steps must be at least 1 (got 0)." in capsys.readouterr().err
    assert train.main(["--force-resume"]) == 2
    assert "--force-resume only applies when resuming training" in capsys.readouterr().err


def test_data_order_is_a_function_of_seed_and_epoch_and_resumes_mid_epoch():
    rows = list(range(10))
    a, b = ResumableSampler(rows, 4, seed=3), ResumableSampler(rows, 4, seed=3)
    a.set_epoch(1)
    b.set_epoch(1)
    assert list(a) == list(b) and sorted(a) == rows
    b.set_epoch(0)
    assert list(b) != list(a)
    # Two workers of batch 2 share out, step by step, the rows one worker of batch 4 takes.
    one = list(ResumableSampler(rows, 4, seed=3))
    w0, w1 = (list(ResumableSampler(rows, 2, seed=3, num_replicas=2, rank=r)) for r in (0, 1))
    assert sorted(w0[:2] + w1[:2]) == sorted(one[:4])

    loader = ResumableLoader(rows, ResumableSampler(rows, 4, seed=3), collate_fn=list)
    loader.sampler.set_epoch(1)
    full = list(loader)
    assert len(loader) == 3 and [r for batch in full for r in batch] == list(a)
    for _ in range(2):
        loader.batch_trained()
    state = loader.state_dict()
    assert state == {"epoch": 1, "batches": 2}
    fresh = ResumableLoader(rows, ResumableSampler(rows, 4, seed=3), collate_fn=list)
    fresh.load_state_dict(state)
    fresh.sampler.set_epoch(1)                   # Lightning sets the resumed epoch again: the position stays
    assert list(fresh) == full[2:] and len(fresh) == 3
    fresh.sampler.set_epoch(2)                   # a new epoch starts at its first batch
    assert sum(len(batch) for batch in fresh) == 10

