"""Crash-safe checkpoint writes: a training process killed (SIGKILL) half-way through writing
epoch 1's checkpoint leaves the previous last.ckpt whole, locally and on S3 (moto's server on
127.0.0.1), and no partial file under a checkpoint's name; --resume-from-checkpoint then
continues from that previous checkpoint. Removing old checkpoints never takes the last one.

The kill is placed by storage.CHECKPOINT_WRITE_HOOK: the N-th checkpoint write of the run
writes half its bytes, creates a marker file and waits; the test kills it there. Locally
last.ckpt is a hard link to the step's checkpoint, not a write, so epoch 1's
epoch=1-step=4.ckpt is the 2nd write; on S3 every save writes both, and the 4th write is
epoch 1's last.ckpt (writes 1-3: epoch=0-step=2.ckpt, last.ckpt, epoch=1-step=4.ckpt)."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import storage
import train
from conftest import REPO, read_scalars

ARGV = ["--name", "crash", "--train-dataset-length", "8", "--test-dataset-length", "2", "--batch-size", "4",
        "--max-epochs", "3", "--val-generations", "0", "--num-sanity-val-steps", "0", "--max-length", "64",
        "--log-every-n-steps", "1", "--lr", "1e-3"]


def kill_during_write(storage_path: str, tmp_path, write: int) -> str:
    """Run train.py in a subprocess until it is inside its `write`-th checkpoint write; SIGKILL it there."""
    marker = tmp_path / "inside-write"
    env = {**os.environ, storage.CHECKPOINT_WRITE_HOOK: f"{write}:{marker}", "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "train.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "train.py", "--storage-path", storage_path, *ARGV], cwd=REPO,
                                env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            while not marker.exists():
                assert proc.poll() is None, (tmp_path / "train.log").read_text()[-3000:]
                time.sleep(0.2)
            proc.send_signal(signal.SIGKILL)
            assert proc.wait() == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return storage.join(storage_path, "crash")


def global_step(path: str) -> int:
    with storage.filesystem(path).open(path, "rb") as f:
        return torch.load(f, map_location="cpu", weights_only=True)["global_step"]


def resumed_steps(run: str, before: set) -> list[int]:
    """train/loss steps logged by the event files the resumed run added."""
    folder = storage.join(run, "tensorboard")
    storage.filesystem(folder).invalidate_cache()      # s3fs lists from a cache
    steps = []
    for name in sorted(set(storage.listdir(folder)) - before):
        steps += [s for s, _ in read_scalars(storage.join(folder, name)).get("train/loss", [])]
    return sorted(steps)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_killed_save_keeps_the_previous_checkpoint_and_resume_continues_from_it(where, tmp_path, request, capsys):
    if where == "s3":
        request.getfixturevalue("s3_server")
        storage_path = "s3://test-bucket/runs"
    else:
        storage_path = str(tmp_path / "runs")
    run = kill_during_write(storage_path, tmp_path, 2 if where == "local" else 4)
    checkpoints = storage.join(run, "checkpoints")
    storage.filesystem(checkpoints).invalidate_cache()
    entries = storage.listdir(checkpoints)
    complete = sorted(e for e in entries if e.endswith(".ckpt"))
    # Every file under a checkpoint's name loads whole; last.ckpt is still epoch 0's.
    if where == "local":
        assert complete == ["epoch=0-step=2.ckpt", "last.ckpt"]
        assert [global_step(storage.join(checkpoints, e)) for e in complete] == [2, 2]
        assert os.path.samefile(os.path.join(checkpoints, "last.ckpt"), os.path.join(checkpoints, complete[0]))
        # The half-written bytes sit in a hidden temporary file, never under the final name.
        partial = [e for e in entries if not e.endswith(".ckpt")]
        assert len(partial) == 1 and partial[0].startswith(".epoch=1-step=4.ckpt.tmp-")
        size = os.path.getsize(os.path.join(checkpoints, partial[0]))
        assert 0 < size < os.path.getsize(os.path.join(checkpoints, "last.ckpt"))
    else:
        assert complete == ["epoch=0-step=2.ckpt", "epoch=1-step=4.ckpt", "last.ckpt"]
        assert [global_step(storage.join(checkpoints, e)) for e in complete] == [2, 4, 2]
        assert entries == complete                # an S3 object appears only once its upload completes

    before = set(storage.listdir(storage.join(run, "tensorboard")))
    assert train.main(["--resume-from-checkpoint", run]) == 0
    assert "Done: step 6." in capsys.readouterr().out
    assert resumed_steps(run, before) == [2, 3, 4, 5]       # from last.ckpt's step 2, not epoch 1's step 4
    storage.filesystem(checkpoints).invalidate_cache()
    # --ckpt-to-keep 2 plus last.ckpt; the killed run's temporary file was cleared by the next save.
    assert storage.listdir(checkpoints) == ["epoch=1-step=4.ckpt", "epoch=2-step=6.ckpt", "last.ckpt"]
    assert global_step(storage.join(checkpoints, "last.ckpt")) == 6
    if where == "local":     # the link follows the newest checkpoint; pruning step 2's kept it whole
        assert os.path.samefile(os.path.join(checkpoints, "last.ckpt"), os.path.join(checkpoints, "epoch=2-step=6.ckpt"))


def test_removing_never_deletes_the_last_checkpoint(tmp_path):
    io = storage.checkpoint_io()
    io.save_checkpoint({"global_step": 1}, str(tmp_path / "a.ckpt"))
    io.remove_checkpoint(str(tmp_path / "a.ckpt"))
    assert os.listdir(tmp_path) == ["a.ckpt"]                 # the only one: kept
    io.save_checkpoint({"global_step": 2}, str(tmp_path / "b.ckpt"))
    io.remove_checkpoint(str(tmp_path / "a.ckpt"))
    assert os.listdir(tmp_path) == ["b.ckpt"]
    assert io.load_checkpoint(str(tmp_path / "b.ckpt")) == {"global_step": 2}


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "last.ckpt"
    storage.write_bytes_atomic(str(path), b"old complete bytes")

    def fail():
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        storage.write_bytes_atomic(str(path), b"new bytes that never finish", midway=fail)
    assert path.read_bytes() == b"old complete bytes" and os.listdir(tmp_path) == ["last.ckpt"]


def test_without_hard_links_last_ckpt_is_written(tmp_path, monkeypatch):
    """A file system that refuses hard links (os.link raises) gets last.ckpt written whole, as a
    file of its own, and the run finishes."""
    def refuse(source, path):
        raise OSError(95, "Operation not supported")
    monkeypatch.setattr(storage, "link_atomic", refuse)
    argv = [a if a != "3" else "1" for a in ARGV]           # --max-epochs 1
    assert train.main(["--storage-path", str(tmp_path), *argv]) == 0
    checkpoints = tmp_path / "crash" / "checkpoints"
    assert sorted(os.listdir(checkpoints)) == ["epoch=0-step=2.ckpt", "last.ckpt"]
    assert not os.path.samefile(checkpoints / "last.ckpt", checkpoints / "epoch=0-step=2.ckpt")
    assert global_step(str(checkpoints / "last.ckpt")) == 2
