"""train.py's command line: every seed flag, YAML defaults, and one sentence per bad input."""
import json
import subprocess
import sys

import pytest

import flags
import train
from conftest import REPO, write_jsonl

SEED_FLAGS = [
    "--use-ray", "--model-name", "--dataset-name", "--training-type", "--storage-path", "--name",
    "--num-workers", "--accelerator-type", "--placement-strategy", "--seed", "--max-epochs", "--use-gpu",
    "--batch-size", "--lr", "--resume-from-checkpoint", "--accumulate-grad-batches", "--strategy",
    "--precision", "--mode", "--check-val-every-n-epoch", "--ckpt-to-keep", "--checkpoint-frequency",
    "--state-dict-type", "--dataset-source", "--verbose", "--train-dataset-length", "--test-dataset-length",
    "--num-sanity-val-steps", "--sanity-train", "--dataset-random-sample", "--beta", "--roundoff",
    "--train-percentile", "--test-percentile", "--calculate-win-rate", "--lambda",
    "--config", "--max-length", "--max-steps",
]
BOOLEANS = ["--use-ray", "--use-gpu", "--verbose", "--sanity-train", "--dataset-random-sample",
            "--calculate-win-rate"]


def test_help_lists_every_seed_flag():
    out = subprocess.run([sys.executable, "train.py", "--help"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0
    for name in SEED_FLAGS:
        assert name in out.stdout, name
    for name in BOOLEANS:
        assert "--no-" + name[2:] in out.stdout, name


def test_yaml_supplies_defaults_and_command_line_wins(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lr: 1e-3\nbatch-size: 3\nsanity_train: true\nprecision: bf16-mixed\n")
    config, given = flags.parse_config(["--config", str(cfg), "--batch-size", "5"])
    assert config["lr"] == 1e-3 and config["batch_size"] == 5 and config["sanity_train"] is True
    assert config["precision"] == "bf16-mixed" and config["max_epochs"] == 1
    assert {"lr", "batch_size", "sanity_train", "precision"} <= given and "max_epochs" not in given


def run_main(capsys, *argv):
    code = train.main(list(argv))
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize("argv, sentence", [
    (["--center-rewards-coefficient", "0.01"], "--center-rewards-coefficient only applies to --training-type bt"),
    (["--reward-pooling", "reply"], "--reward-pooling only applies to --training-type bt"),
    (["--training-type", "bt", "--calculate-win-rate", "--judge", "length"], "--calculate-win-rate needs a generative"),
    (["--precompute-ref-log-probs"], "--precompute-ref-log-probs only applies to --training-type dpo"),
    (["--precision", "transformer-engine"], "--precision transformer-engine needs NVIDIA transformer-engine"),
    (["--strategy", "fsdp"], "--strategy fsdp needs --use-ray"),
    (["--max-failures", "2"], "--max-failures only applies with --use-ray"),
    (["--use-ray", "--strategy", "fsdp"], "--strategy fsdp needs --use-gpu"),
    (["--use-ray", "--mode", "test"], "--mode test runs in one process; drop --use-ray"),
    (["--calculate-win-rate"], "--calculate-win-rate needs --judge"),
    (["--judge", "length"], "--judge only applies with --calculate-win-rate"),
    (["--calculate-win-rate", "--judge", "length", "--win-rate-top-p", "0"], "--win-rate-top-p in (0, 1]"),
    (["--calculate-win-rate", "--judge", "openai:m", "--judge-api-key-env", "NO_SUCH_KEY_VAR"],
     "$NO_SUCH_KEY_VAR, which is not set"),
    (["--num-workers", "4"], "--num-workers only applies with --use-ray"),
    (["--lambda", "0.5"], "--lambda only applies to --training-type sft_verifier"),
    (["--verifier-k", "8"], "--verifier-k only applies to --training-type sft_verifier"),
    (["--beta", "2.0"], "--beta only applies to --training-type dpo"),
    (["--rpo-alpha", "1.0"], "--rpo-alpha only applies to --training-type dpo"),
    (["--training-type", "dpo", "--rpo-alpha", "-1"], "--rpo-alpha must not be negative"),
    (["--dpo-loss", "ipo"], "--dpo-loss only applies to --training-type dpo"),
    (["--training-type", "dpo", "--label-smoothing", "0.1"], "--label-smoothing only applies to --dpo-loss cdpo"),
    (["--training-type", "dpo", "--dpo-loss", "simpo", "--precompute-ref-log-probs"], "is reference-free"),
    (["--state-dict-type", "sharded"], "--state-dict-type only applies to --strategy fsdp"),
    (["--train-percentile", "0"], "--train-percentile must be in (0, 100]"),
    (["--test-percentile", "101"], "--test-percentile must be in (0, 100]"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--max-nonfinite-steps", "0"], "--max-nonfinite-steps must be at least 1"),
    (["--train-dataset-length", "-3"], "--train-dataset-length must be at least 1"),
    (["--max-length", "1"], "--max-length must be at least 2"),
    (["--use-gpu"], "no CUDA GPU is visible"),
    (["--resume-from-checkpoint", "/nonexistent/x.ckpt"], "Checkpoint /nonexistent/x.ckpt does not exist"),
    (["--config", "/nonexistent.yaml"], "Config file /nonexistent.yaml does not exist"),
])
def test_flags_we_cannot_honour_fail_with_one_sentence(capsys, argv, sentence):
    code, err = run_main(capsys, *argv)
    assert code == 2
    assert err.startswith("error: ") and sentence in err and len(err.strip().splitlines()) == 1


def test_unknown_yaml_key(capsys, tmp_path):
    (tmp_path / "c.yaml").write_text("learning_rate: 1\n")
    code, err = run_main(capsys, "--config", str(tmp_path / "c.yaml"))
    assert code == 2 and "unknown key 'learning_rate'" in err


BAD_ROWS = [
    ({"text": "hello"}, "row 0, field missing column: expected 'messages'"),
    ({"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]},
     "row 0, field messages[0].role: unknown role 'robot'"),
    ({"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "x"}]},
     "row 0, field messages[0].content: empty content"),
    ({"messages": [{"role": "user", "content": ["a"]}, {"role": "assistant", "content": "x"}]},
     "row 0, field messages[0].content: expected a string, got list"),
]


@pytest.mark.parametrize("row, sentence", BAD_ROWS)
def test_bad_data_names_data_set_row_and_field(capsys, tmp_path, row, sentence):
    path = write_jsonl(tmp_path / "d" / "test.jsonl", [row])
    write_jsonl(tmp_path / "d" / "train.jsonl", [row])
    code, err = run_main(capsys, "--dataset-name", str(tmp_path / "d"), "--storage-path", str(tmp_path / "runs"))
    assert code == 2 and sentence in err and str(tmp_path / "d") in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.ckpt"))
    del path


def test_missing_data_file_and_unreachable_model(capsys, tmp_path):
    code, err = run_main(capsys, "--dataset-name", str(tmp_path / "missing.jsonl"))
    assert code == 2 and f"Data set path {tmp_path / 'missing.jsonl'} does not exist" in err
    code, err = run_main(capsys, "--model-name", "no-such-org/no-such-model")
    assert code == 2 and "Could not load the tokenizer of 'no-such-org/no-such-model'" in err
    assert len(err.strip().splitlines()) == 1


def test_bad_input_exits_non_zero_as_a_process(tmp_path):
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    bad = {"messages": [{"role": "bot", "content": "x"}]}
    (tmp_path / "bad.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [good] * 20 + [bad] * 20))
    out = subprocess.run([sys.executable, "train.py", "--dataset-name", str(tmp_path / "bad.jsonl")],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 2
    assert "unknown role 'bot'" in out.stderr and "Traceback" not in out.stderr
