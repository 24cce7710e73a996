"""--use-ray on a real local Ray cluster (started with `ray start --head` on 127.0.0.1):
DDP equivalence, validation reduced over workers, and `ray job submit` writing checkpoints
and TensorBoard events to a real S3 endpoint (moto's server)."""
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import checkpoints
import train
from conftest import REPO, free_port, read_scalars
from faults import fault, fault_and_resume_steps, steps_lost

# The CLI of the Ray this interpreter imports (a virtual environment need not be on PATH).
RAY = str(Path(sys.executable).with_name("ray")) if Path(sys.executable).with_name("ray").exists() else shutil.which("ray")


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A one-node cluster with the job server (dashboard) on loopback; token auth off
    explicitly, so a token left by another cluster cannot break job submission."""
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    gcs, dashboard = free_port(), free_port()
    subprocess.run([RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
                    "--num-cpus", "2", "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                    "--dashboard-port", str(dashboard), "--disable-usage-stats"],
                   check=True, env=env, capture_output=True)
    # The job server's agent comes up a little after `ray start` returns: wait for it.
    address = f"http://127.0.0.1:{dashboard}"
    for _ in range(60):
        probe = subprocess.run([RAY, "job", "list", "--address", address], env=env, capture_output=True)
        if probe.returncode == 0:
            break
        time.sleep(1)
    old = {k: os.environ.get(k) for k in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    os.environ.update(RAY_ADDRESS=f"127.0.0.1:{gcs}", RAY_AUTH_MODE="disabled")
    try:
        yield {"gcs": f"127.0.0.1:{gcs}", "dashboard": f"http://127.0.0.1:{dashboard}", "env": env}
    finally:
        import ray
        ray.shutdown()
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def latest_weights(run_dir):
    names = checkpoints.ray_checkpoint_names(os.listdir(run_dir))
    ckpt = torch.load(os.path.join(run_dir, names[-1], "checkpoint.ckpt"), map_location="cpu",
                      weights_only=True)
    return ckpt, names


def scalars(path, tag):
    return read_scalars(path)[tag]


def run_ray(**flags):
    import ray
    argv = ["--use-ray"]
    for k, v in flags.items():
        argv += [f"--{k.replace('_', '-')}"] + ([] if v is True else [str(v)])
    try:
        return train.main(argv)
    finally:
        ray.shutdown()


def test_two_workers_equal_one_worker_with_twice_the_batch(ray_cluster, tmp_path):
    """DDP over 2 Ray workers (gloo) x batch 4 ends at the weights of 1 worker x batch 8. This
    also shows each worker trains on its own shard: had both seen the same 4 rows, the step
    would be batch 4's, not batch 8's."""
    common = dict(storage_path=tmp_path, train_dataset_length=32, test_dataset_length=8, max_epochs=1,
                  val_generations=2, val_max_new_tokens=8, num_sanity_val_steps=0, lr=1e-3, log_every_n_steps=1,
                  calculate_win_rate=True, judge="length", win_rate_prompts=5, validate_before_training=True)
    assert run_ray(name="two", num_workers=2, batch_size=4, **common) == 0
    assert run_ray(name="one", num_workers=1, batch_size=8, **common) == 0
    two, names = latest_weights(tmp_path / "two")
    one, _ = latest_weights(tmp_path / "one")
    assert two["global_step"] == one["global_step"] == 4 and len(names) == 1
    start = load_file(str(REPO / "embedded" / "model" / "model.safetensors"))
    for name, value in one["state_dict"].items():
        torch.testing.assert_close(two["state_dict"][name], value, rtol=0, atol=1e-5)
        key = name.removeprefix("model.")
        if key in start:
            assert not torch.equal(value, start[key])        # the 4 steps did move every weight
    # The step-0 validation of the same weights on the same 8 rows: reduced over both workers,
    # it equals the single worker's (rank 0 alone would see only 4 rows).
    val_two = scalars(str(tmp_path / "two" / "tensorboard"), "val/loss")
    val_one = scalars(str(tmp_path / "one" / "tensorboard"), "val/loss")
    assert val_two[0][0] == val_one[0][0] == 0
    assert abs(val_two[0][1] - val_one[0][1]) < 1e-5
    assert abs(val_two[-1][1] - val_one[-1][1]) < 1e-4
    # Win rate: each worker answers its share of the prompts; rank 0 writes all of them.
    assert scalars(str(tmp_path / "two" / "tensorboard"), "val/win_rate")[0] == (0, 0.5)
    records = [json.loads(line) for line in (tmp_path / "two" / "win_rate" / "val-step-0000004.jsonl").open()]
    assert [r["index"] for r in records] == [0, 1, 2, 3, 4]


def test_ray_job_submit_writes_checkpoints_and_events_to_s3(ray_cluster, s3_server):
    import s3fs
    env_vars = {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                                           "AWS_ENDPOINT_URL", "S3_ENDPOINT")}
    command = [RAY, "job", "submit", "--address", ray_cluster["dashboard"], "--working-dir", str(REPO),
         "--runtime-env-json", json.dumps({"env_vars": env_vars}), "--",
         "python", "train.py", "--use-ray", "--num-workers", "2", "--storage-path", "s3://test-bucket/runs",
         "--name", "job", "--train-dataset-length", "32", "--test-dataset-length", "8", "--max-epochs", "2",
         "--batch-size", "4", "--val-generations", "2", "--val-max-new-tokens", "8", "--lr", "1e-3",
         "--log-every-n-steps", "1"]
    for _ in range(30):     # the node's job agent may still be starting: Ray answers at once, retry
        out = subprocess.run(command, env=ray_cluster["env"], capture_output=True, text=True, timeout=600)
        if "No available agent to submit job" not in out.stderr + out.stdout:
            break
        time.sleep(2)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "succeeded" in (out.stdout + out.stderr).lower()
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server})
    entries = [os.path.basename(p) for p in fs.ls("test-bucket/runs/job")]
    names = checkpoints.ray_checkpoint_names(entries)
    assert len(names) == 2 and "config.yaml" in entries
    with fs.open(f"test-bucket/runs/job/{names[-1]}/checkpoint.ckpt", "rb") as f:
        assert torch.load(f, map_location="cpu", weights_only=True)["global_step"] == 8
    steps = [s for s, _ in scalars("s3://test-bucket/runs/job/tensorboard", "train/loss")]
    assert steps == list(range(8))


def test_killed_worker_is_restarted_from_the_last_checkpoint(ray_cluster, tmp_path, monkeypatch, record_property):
    """Rank 1 is SIGKILLed after step 6, mid-epoch 2 (4 steps an epoch, a checkpoint at each
    epoch's end); Ray restarts the workers from the epoch-1 checkpoint (step 4) and the run ends
    at step 12 as planned: 2 steps lost, less than the checkpoint interval."""
    marker = tmp_path / "fault-happened"
    monkeypatch.setenv(train.FAULT_ENV, fault(6, "kill", marker, rank=1))
    code = run_ray(storage_path=tmp_path, name="fault", num_workers=2, batch_size=4, train_dataset_length=32,
                   test_dataset_length=8, max_epochs=3, val_generations=0, num_sanity_val_steps=0,
                   max_failures=1, lr=1e-3)
    assert code == 0
    ckpt, names = latest_weights(tmp_path / "fault")
    assert ckpt["global_step"] == 12 and ckpt["epoch"] == 2
    # The restarted worker began at a checkpoint's step: Ray did restart it, from a checkpoint.
    step, resumed = fault_and_resume_steps(marker)
    record_property("steps_lost", step - resumed[0])
    print(f"Ray restart after SIGKILL at step {step}: {step - resumed[0]} steps lost (checkpoint every 4)")
    assert (step, resumed) == (6, [4])

    # --resume-from-checkpoint with the Ray run folder: its latest checkpoint and saved config.
    assert run_ray(resume_from_checkpoint=tmp_path / "fault", max_epochs=4) == 0
    ckpt, names = latest_weights(tmp_path / "fault")
    assert ckpt["global_step"] == 16 and ckpt["epoch"] == 3


def test_run_killed_mid_epoch_resumes_exactly(ray_cluster, tmp_path, monkeypatch, record_property):
    """With --checkpoint-every-n-steps 3, rank 1 is SIGKILLed after step 7 of 8 (4 steps an
    epoch) and the run fails (--max-failures 0); --resume-from-checkpoint continues both
    workers from the step-6 checkpoint, each at its shard's batch 2 of epoch 1, and the run
    ends at the weights of the same run left alone (to 1e-6): 1 step lost. (Ray's own restart,
    --max-failures, is checked for the other training types below.)"""
    common = dict(storage_path=tmp_path, num_workers=2, batch_size=4, train_dataset_length=32, test_dataset_length=8,
                  max_epochs=2, val_generations=0, num_sanity_val_steps=0, lr=1e-3, checkpoint_every_n_steps=3)
    assert run_ray(name="straight", **common) == 0
    marker = tmp_path / "fault-happened"
    monkeypatch.setenv(train.FAULT_ENV, fault(7, "kill", marker, rank=1))
    with pytest.raises(Exception):
        run_ray(name="fault", **common)
    assert marker.exists()
    stopped, _ = latest_weights(tmp_path / "fault")
    assert stopped["global_step"] == 6
    assert stopped["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches": 2}]
    # The variable stays set: the marker keeps the fault from firing again, and the resumed
    # run's rank 1 records where it starts.
    assert run_ray(resume_from_checkpoint=tmp_path / "fault") == 0
    straight, _ = latest_weights(tmp_path / "straight")
    resumed, _ = latest_weights(tmp_path / "fault")
    assert straight["global_step"] == resumed["global_step"] == 8
    for name, value in straight["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][name], value, rtol=0, atol=1e-6)
    record_property("steps_lost", steps_lost(marker))
    assert steps_lost(marker) == 1


# test_resume's runs over 2 workers, each taking half of its batch (4 steps an epoch, 2 epochs,
# checkpoints at steps 3, 4, 6 and 8), the fault (mode, rank 1 stops after step S) and the step
# the restart begins at (S's own checkpoint counts: the fault comes after it).
# grpo's test reward ("distinct") is registered only in the test process: under Ray a bt reward
# model trained here for 2 steps scores the completions, which also depends on what was sampled.
RAY_FAULTS = {"dpo": ("kill", 7, 6), "bt": ("raise", 5, 4), "sft_verifier": ("kill", 6, 6), "grpo": ("raise", 7, 6)}


@pytest.mark.parametrize("kind", RAY_FAULTS)
def test_worker_fault_is_restarted_by_ray_and_resumes_exactly(kind, ray_cluster, tmp_path, monkeypatch,
                                                              record_property):
    """Rank 1 stops after step S (SIGKILL or an exception); with --max-failures 1 Ray restarts
    both workers from the last checkpoint it registered, and the run completes by itself at the
    weights of the same run left alone (to 1e-6). Steps lost, S minus the step the restart
    began at: less than one checkpoint interval (3), as every checkpoint is registered with Ray
    before training goes on."""
    import ray
    import test_resume
    mode, step, restart = RAY_FAULTS[kind]
    half = str(int(test_resume.TYPES[kind][test_resume.TYPES[kind].index("--batch-size") + 1]) // 2)
    rewards = []
    if kind == "grpo":
        assert train.main(["--training-type", "bt", "--storage-path", str(tmp_path), "--name", "rm", "--max-steps",
                           "2", "--batch-size", "4", *test_resume.TINY[:-2]]) == 0
        rewards = ["--reward-model", str(tmp_path / "rm"), "--reward-funcs", "correctness"]

    def run(name, *extra):
        try:
            return train.main(["--use-ray", "--num-workers", "2", *test_resume.argv(kind, tmp_path, name),
                               "--batch-size", half, *rewards, *extra])
        finally:
            ray.shutdown()
    assert run("straight") == 0
    marker = tmp_path / "fault-happened"
    monkeypatch.setenv(train.FAULT_ENV, fault(step, mode, marker, rank=1))
    assert run("fault", "--max-failures", "1") == 0
    straight, _ = latest_weights(tmp_path / "straight")
    resumed, _ = latest_weights(tmp_path / "fault")
    assert straight["global_step"] == resumed["global_step"] == 8
    test_resume.assert_same_weights(straight, resumed)
    if kind == "grpo":      # every group's completions got different rewards: each step did update
        assert all(v == 0 for _, v in read_scalars(str(tmp_path / "straight" / "tensorboard"))[
            "train/frac_reward_zero_std"])
    fault_step, starts = fault_and_resume_steps(marker)
    lost = fault_step - starts[0]
    record_property("steps_lost", lost)
    print(f"{kind}: Ray restart after {mode} at step {step}: {lost} steps lost (checkpoint every 3)")
    assert (fault_step, starts) == (step, [restart]) and lost <= 3


def test_grpo_on_two_workers(ray_cluster, tmp_path):
    """grpo under Ray: each worker samples and scores completions for its shard of the prompts;
    the rollout statistics and the greedy validation reward are reduced over both workers."""
    assert run_ray(training_type="grpo", storage_path=tmp_path, name="grpo", num_workers=2, batch_size=2,
                   num_generations=2, max_new_tokens=8, max_steps=2, train_dataset_length=8, test_dataset_length=4,
                   val_generations=0, num_sanity_val_steps=0, log_every_n_steps=1, lr=1e-4,
                   validate_before_training=True) == 0
    ckpt, _ = latest_weights(tmp_path / "grpo")
    assert ckpt["global_step"] == 2
    s = read_scalars(str(tmp_path / "grpo" / "tensorboard"))
    assert [step for step, _ in s["train/reward"]] == [0, 1]
    # 2 workers x 2 prompts x 2 completions of at most 8 tokens.
    assert all(1 <= v <= 8 for _, v in s["train/completion_length_min"] + s["train/completion_length_max"])
    assert s["val/reward/correctness"][0][0] == 0 and 0 <= s["val/reward/correctness"][0][1] <= 1


def two_workers_and_one_local(tmp_path, atol: float = 1e-5, **flags) -> tuple[dict, dict]:
    """Two steps on 2 Ray workers x batch 4 ("two") and in one local process with batch 8
    ("one"), from the same 16 rows; asserts both end at the same weights (to `atol`) and returns
    both checkpoints."""
    common = dict(storage_path=tmp_path, train_dataset_length=16, test_dataset_length=4, max_steps=2,
                  val_generations=0, num_sanity_val_steps=0, lr=1e-3, max_length=128, **flags)
    assert run_ray(name="two", num_workers=2, batch_size=4, **common) == 0
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in common.items()]
    assert train.main([*argv, "--name", "one", "--batch-size", "8"]) == 0
    two, _ = latest_weights(tmp_path / "two")
    one = torch.load(tmp_path / "one" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert two["global_step"] == one["global_step"] == 2 and two["state_dict"].keys() == one["state_dict"].keys()
    for name, value in one["state_dict"].items():
        torch.testing.assert_close(two["state_dict"][name], value, rtol=0, atol=atol)
    return two, one


def test_lora_on_two_workers_equals_one_local_process_with_twice_the_batch(ray_cluster, tmp_path):
    """--lora-r under Ray DDP: 2 workers x batch 4 end at the adapters of one local run with batch 8
    (DDP averages the adapters' gradients; the frozen base has none), and the Ray checkpoint holds
    the adapters alone. --lora-dropout 0: dropout masks would differ between the two layouts."""
    two, one = two_workers_and_one_local(tmp_path, lora_r=4, lora_dropout=0.0)
    assert all("lora_" in k for k in one["state_dict"])
    assert all(torch.count_nonzero(v) > 0 for k, v in two["state_dict"].items() if "lora_B" in k)


def test_orpo_on_two_workers_equals_one_local_process_with_twice_the_batch(ray_cluster, tmp_path):
    """--training-type orpo under Ray DDP: each pair's loss is its own (no reference, no batch
    statistic), so 2 workers x batch 4 end at the weights of one local run with batch 8."""
    # 1e-4, a tenth of one AdamW step at lr 1e-3: DDP's averaged gradient differs from batch 8's in
    # its last bits, and Adam's m / sqrt(v) magnifies that where a gradient is near 0 (measured: 1.1e-5).
    two, _ = two_workers_and_one_local(tmp_path, atol=1e-4, training_type="orpo")
    start = load_file(str(REPO / "embedded" / "model" / "model.safetensors"))
    moved = [k for k, v in two["state_dict"].items() if k.removeprefix("model.") in start
             and not torch.equal(v, start[k.removeprefix("model.")])]
    assert len(moved) == len(start)      # the two ORPO steps moved every weight, on both layouts alike


def test_kto_on_two_workers(ray_cluster, tmp_path):
    """--training-type kto under Ray DDP (the dpo pairs unpaired, the reference a frozen copy on
    each worker): two steps, a finite loss and KL estimate z0 at each, reduced over both workers."""
    assert run_ray(training_type="kto", storage_path=tmp_path, name="kto", num_workers=2, batch_size=4, max_steps=2,
                   train_dataset_length=16, test_dataset_length=4, val_generations=0, num_sanity_val_steps=0,
                   log_every_n_steps=1, lr=1e-4, max_length=128) == 0
    ckpt, _ = latest_weights(tmp_path / "kto")
    assert ckpt["global_step"] == 2
    s = read_scalars(str(tmp_path / "kto" / "tensorboard"))
    assert [step for step, _ in s["train/loss"]] == [0, 1] and [step for step, _ in s["train/kl"]] == [0, 1]
    assert all(math.isfinite(v) and v > 0 for _, v in s["train/loss"]) and all(v >= 0 for _, v in s["train/kl"])


def test_bad_data_in_a_ray_worker_is_one_sentence(ray_cluster, tmp_path, capsys):
    (tmp_path / "bad.jsonl").write_text('{"messages": [{"role": "bot", "content": "x"}]}\n' * 20)
    assert run_ray(dataset_name=tmp_path / "bad.jsonl", storage_path=tmp_path, num_workers=1) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: Data set ") and "unknown role 'bot'" in err[-1]


def test_strategy_values(capsys):
    assert train.main(["--use-ray", "--strategy", "deepspeed"]) == 2
    assert "--strategy deepspeed is not supported" in capsys.readouterr().err
    assert train.main(["--strategy", "ddp"]) == 2
    assert "--strategy ddp needs --use-ray" in capsys.readouterr().err


def user_error_classes() -> list[type]:
    """Every user-error class of the project: each module imported, UserError's subclasses walked."""
    import importlib

    from errors import UserError
    for path in sorted(REPO.glob("*.py")) + sorted(REPO.glob("extension/*.py")):
        importlib.import_module(".".join(path.relative_to(REPO).with_suffix("").parts))
    found, todo = [], [UserError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += cls.__subclasses__()
    return sorted(found, key=lambda c: c.__name__)


def test_every_user_error_raised_in_a_ray_worker_is_one_sentence_and_exit_2(ray_cluster, tmp_path, capsys,
                                                                             monkeypatch):
    """train.py --use-ray, whose workers raise each user-error class in turn: the driver prints
    that sentence alone and exits with 2, every time (not Ray's traceback wall, exit 1)."""
    import ray
    classes = user_error_classes()
    assert {"ConfigError", "DataError", "JudgeError", "ModelLoadError", "NonFiniteLossError", "RewardError",
            "StorageError", "TemplateError"} <= {c.__name__ for c in classes}
    ray.init()      # joined once: launch leaves a Ray it did not start running, which saves a start a class
    try:
        for cls in classes:
            sentence = f"The {cls.__name__} of this test, raised in a Ray worker."

            def worker(c, cls=cls, sentence=sentence):
                raise cls(sentence)
            monkeypatch.setattr(train, "ray_worker", worker)
            assert train.main(["--use-ray", "--storage-path", str(tmp_path), "--name", cls.__name__]) == 2, cls
            err = capsys.readouterr().err.strip().splitlines()
            assert err[-1] == f"error: {sentence}", (cls, err[-3:])
    finally:
        ray.shutdown()
