"""Runs with --storage-path s3://...: checkpoints, config and TensorBoard events land on a
real S3 endpoint (moto's server on 127.0.0.1), read back through s3fs and TensorBoard's own
loader; resume from an s3:// run folder continues at the saved step."""
import os

import torch
import yaml

import train
from conftest import read_scalars


def test_training_writes_checkpoints_and_events_to_s3(s3_server, tmp_path, capsys):
    import s3fs

    argv = ["--storage-path", "s3://test-bucket/runs", "--name", "s3run", "--train-dataset-length", "32",
            "--test-dataset-length", "8", "--max-epochs", "2", "--val-generations", "1",
            "--val-max-new-tokens", "8", "--log-every-n-steps", "1", "--lr", "1e-3", "--validate-before-training"]
    assert train.main(argv) == 0
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server})
    assert sorted(os.path.basename(p) for p in fs.ls("test-bucket/runs/s3run/checkpoints")) == \
        ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt", "last.ckpt"]
    config = yaml.safe_load(fs.cat("test-bucket/runs/s3run/config.yaml"))
    assert config["storage_path"] == "s3://test-bucket/runs" and config["train_dataset_length"] == 32
    with fs.open("test-bucket/runs/s3run/checkpoints/last.ckpt", "rb") as f:
        assert torch.load(f, map_location="cpu", weights_only=True)["global_step"] == 8
    # Nothing secret in what the run wrote.
    written = [p for p in fs.find("test-bucket/runs/s3run") if not p.endswith("/")]   # "dir/" markers hold nothing
    assert len(written) == 7
    for path in written:
        assert b"test-secret" not in fs.cat(path) and b"test-key-id" not in fs.cat(path)

    events = read_scalars("s3://test-bucket/runs/s3run/tensorboard")
    assert [step for step, _ in events["train/loss"]] == list(range(8))
    assert [step for step, _ in events["val/loss"]] == [0, 3, 7]

    assert train.main(["--resume-from-checkpoint", "s3://test-bucket/runs/s3run", "--max-epochs", "3"]) == 0
    fs.invalidate_cache()
    assert sorted(os.path.basename(p) for p in fs.ls("test-bucket/runs/s3run/checkpoints")) == \
        ["epoch=1-step=8.ckpt", "epoch=2-step=12.ckpt", "last.ckpt"]   # --ckpt-to-keep 2


def test_s3_without_a_bucket_is_one_sentence(s3_server, capsys):
    assert train.main(["--resume-from-checkpoint", "s3://no-such-bucket/runs/x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Checkpoint s3://no-such-bucket/runs/x ") and len(err.strip().splitlines()) == 1
