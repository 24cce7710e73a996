"""experiments/stages.py: a finished stage is reused only for the command that trained it."""
import json

import pytest

from experiments.stages import COMMAND_FILE, run_stage


def _finished_run(out, name, args=None):
    run = out / name
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    if args is not None:
        (run / COMMAND_FILE).write_text(json.dumps(args) + "\n")


def test_a_finished_stage_of_the_same_command_is_reused(tmp_path, capsys):
    _finished_run(tmp_path, "verifier", ["--lr", "1e-4", "--critique-style", "inverse"])
    assert run_stage("verifier", ["--lr", "1e-4", "--critique-style", "inverse"], str(tmp_path)) == 0.0
    assert "reusing the finished run" in capsys.readouterr().out


def test_a_finished_stage_of_another_command_is_refused_not_reused(tmp_path):
    _finished_run(tmp_path, "verifier", ["--lr", "1e-4", "--critique-style", "inverse"])
    with pytest.raises(SystemExit, match="holds a run of another command"):
        run_stage("verifier", ["--lr", "1e-4", "--critique-style", "check"], str(tmp_path))


def test_a_run_from_before_commands_were_recorded_is_reused_and_says_so(tmp_path, capsys):
    _finished_run(tmp_path, "verifier")
    assert run_stage("verifier", ["--lr", "1e-4"], str(tmp_path)) == 0.0
    assert "its command was not recorded" in capsys.readouterr().out
