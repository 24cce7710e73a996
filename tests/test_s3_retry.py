"""Transient S3 errors are retried with exponential backoff, each retry logged and counted;
permanent ones fail at once; a retried upload sends the whole buffer again, so the object is
never partial. Against a real S3 endpoint (moto's server on 127.0.0.1): failures injected
under s3fs (its `_call_s3`, below its own retry loop), and a training run whose moto server
is stopped in the middle of a checkpoint upload and restarted on the same port.

Backoff waits go through storage.time.sleep, replaced here by a recorder: nothing sleeps."""
import logging
import os
import types

import boto3
import botocore.exceptions as boto
import pytest
import s3fs

import callbacks
import checkpoints
import storage
import train
from conftest import read_scalars


@pytest.fixture
def delays(monkeypatch):
    """The backoff waits storage asked for, in order (no real sleeping); 5 attempts, 1 s base."""
    waits = []
    monkeypatch.setattr(storage, "time", types.SimpleNamespace(sleep=waits.append))
    storage.configure_retries(5, 1.0)
    yield waits
    storage.configure_retries(5, 1.0)


def fail_s3_calls(monkeypatch, errors: dict[str, list]) -> dict[str, list]:
    """Make s3fs's requests of each method raise that method's `errors` one by one, then
    behave; returns the keyword arguments of every such request (uploads' bodies among them)."""
    real = s3fs.S3FileSystem._call_s3
    calls = {method: [] for method in errors}

    async def call_s3(self, method, *args, **kwargs):
        if method in errors:
            calls[method].append(kwargs)
            if len(calls[method]) <= len(errors[method]):
                raise errors[method][len(calls[method]) - 1]
        return await real(self, method, *args, **kwargs)
    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", call_s3)
    return calls


def client_error(code: str, status: int) -> boto.ClientError:
    return boto.ClientError({"Error": {"Code": code, "Message": f"{code} here"},
                             "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


def s3_translated(code: str, status: int) -> OSError:
    """What s3fs raises for a ClientError it has no Python exception for."""
    from s3fs.errors import translate_boto_error
    return translate_boto_error(client_error(code, status))


def get_object(key: str) -> bytes:
    return boto3.client("s3").get_object(Bucket="test-bucket", Key=key)["Body"].read()


TRANSIENT = {
    "connection refused": boto.EndpointConnectionError(endpoint_url="http://127.0.0.1:1/test-bucket"),
    "connection closed": boto.ConnectionClosedError(endpoint_url="http://127.0.0.1:1/test-bucket"),
    "connection reset": ConnectionResetError(104, "Connection reset by peer"),
    "read timeout": boto.ReadTimeoutError(endpoint_url="http://127.0.0.1:1/test-bucket"),
    "slow down": s3_translated("SlowDown", 503),
    "internal error": s3_translated("InternalError", 500),
}
PERMANENT = {
    "no such bucket": FileNotFoundError(2, "The specified bucket does not exist"),
    "access denied": PermissionError(13, "Access Denied"),
    "no credentials": boto.NoCredentialsError(),
    "bad request": s3_translated("InvalidArgument", 400),
    "plain error": ValueError("not storage at all"),
}


@pytest.mark.parametrize("name", sorted(TRANSIENT) + sorted(PERMANENT))
def test_which_errors_are_transient(name):
    assert storage.is_transient({**TRANSIENT, **PERMANENT}[name]) == (name in TRANSIENT)


@pytest.mark.parametrize("name", ["connection refused", "connection reset", "slow down"])
def test_a_failing_upload_is_retried_whole_with_backoff(name, s3_server, delays, monkeypatch, caplog):
    path = "s3://test-bucket/runs/r/checkpoints/last.ckpt"
    storage.write_bytes_atomic(path, b"the previous checkpoint")
    data = os.urandom(3 * 2**20)
    puts = fail_s3_calls(monkeypatch, {"put_object": [TRANSIENT[name], TRANSIENT[name]]})["put_object"]
    caplog.set_level(logging.WARNING, logger="storage")

    storage.write_bytes_atomic(path, data)

    # Three attempts, each sending the whole buffer; the object is the new data, whole.
    assert [len(p["Body"]) for p in puts] == [len(data)] * 3 and all(p["Body"] == data for p in puts)
    assert get_object("runs/r/checkpoints/last.ckpt") == data
    assert delays == [1.0, 2.0] and storage.retry_count == 2
    lines = [r.getMessage() for r in caplog.records if r.name == "storage"]
    assert len(lines) == 2
    for k, (line, wait) in enumerate(zip(lines, ["1.0", "2.0"]), start=1):
        assert line.startswith(f"Writing {path} failed (attempt {k}/5): ") and line.endswith(f"; retrying in {wait} s")


def test_an_upload_that_keeps_failing_stops_with_one_sentence_and_keeps_the_old_object(s3_server, delays, monkeypatch,
                                                                                      caplog):
    path = "s3://test-bucket/runs/r/checkpoints/last.ckpt"
    storage.write_bytes_atomic(path, b"the previous checkpoint")
    storage.configure_retries(8, 10.0)
    puts = fail_s3_calls(monkeypatch, {"put_object": [TRANSIENT["connection refused"]] * 8})["put_object"]
    with pytest.raises(storage.StorageError) as error:
        storage.write_bytes_atomic(path, b"new bytes")
    message = str(error.value)
    assert message == (f"Writing {path} failed 8 times in a row, the last time with: Could not connect to the "
                       f"endpoint URL: \"http://127.0.0.1:1/test-bucket\".")
    assert len(puts) == 8 and delays == [10.0, 20.0, 30.0, 30.0, 30.0, 30.0, 30.0]     # doubling, capped at 30 s
    assert storage.retry_count == 7
    assert get_object("runs/r/checkpoints/last.ckpt") == b"the previous checkpoint"


@pytest.mark.parametrize("name", ["access denied", "bad request"])
def test_a_permanent_error_is_not_retried(name, s3_server, delays, monkeypatch, caplog):
    puts = fail_s3_calls(monkeypatch, {"put_object": [PERMANENT[name]]})["put_object"]
    caplog.set_level(logging.WARNING, logger="storage")
    with pytest.raises(type(PERMANENT[name])):
        storage.write_bytes_atomic("s3://test-bucket/x", b"data")
    assert len(puts) == 1 and delays == [] and storage.retry_count == 0
    assert not [r for r in caplog.records if r.name == "storage"]


def test_a_missing_bucket_is_not_retried(s3_server, delays):
    with pytest.raises(FileNotFoundError):
        storage.write_bytes_atomic("s3://no-such-bucket/x", b"data")
    with pytest.raises(FileNotFoundError):
        storage.read_bytes("s3://test-bucket/no-such-key")
    assert delays == [] and storage.retry_count == 0


def test_local_paths_are_not_retried(tmp_path, delays, monkeypatch):
    def refused(*args, **kwargs):
        raise ConnectionRefusedError(111, "Connection refused")
    monkeypatch.setattr(storage.os, "replace", refused)
    with pytest.raises(ConnectionRefusedError):
        storage.write_bytes_atomic(str(tmp_path / "a"), b"data")
    assert delays == [] and storage.retry_count == 0


def test_reads_used_on_resume_are_retried(s3_server, delays, monkeypatch):
    path = "s3://test-bucket/runs/r/checkpoints/last.ckpt"
    storage.checkpoint_io().save_checkpoint({"global_step": 7}, path)
    storage.filesystem(path).invalidate_cache()
    calls = fail_s3_calls(monkeypatch, {"head_object": [TRANSIENT["connection reset"]],
                                        "get_object": [TRANSIENT["connection refused"], TRANSIENT["slow down"]]})
    assert storage.exists(path)
    assert storage.checkpoint_io().load_checkpoint(path) == {"global_step": 7}
    assert len(calls["get_object"]) == 3 and delays == [1.0, 1.0, 2.0] and storage.retry_count == 3


def test_reads_of_a_finished_run_are_retried(s3_server, delays, monkeypatch):
    """What reads a run's checkpoint outside training goes through the same retries: its saved
    config (checkpoints.saved_config), the checkpoint itself (models.load_checkpoint, via
    storage.load_torch), the file's size and date (storage.info, the export cache's key), and
    extension/verify.py's input rows."""
    from extension import verify
    ckpt, rows = "s3://test-bucket/runs/r/checkpoints/last.ckpt", "s3://test-bucket/pairs.jsonl"
    storage.checkpoint_io().save_checkpoint({"hyper_parameters": {"lr": 0.5}, "global_step": 3}, ckpt)
    storage.write_text_atomic(rows, '{"question": "q", "solution": "s"}\n')
    storage.filesystem(ckpt).invalidate_cache()
    calls = fail_s3_calls(monkeypatch, {"get_object": [TRANSIENT["connection reset"], TRANSIENT["slow down"],
                                                       TRANSIENT["internal error"]],
                                        "head_object": [TRANSIENT["read timeout"]]})
    assert checkpoints.saved_config(ckpt) == {"lr": 0.5}
    assert storage.load_torch(ckpt)["global_step"] == 3
    assert storage.info(ckpt)["size"] > 0
    assert verify.read_rows(rows, best_of_n=False, limit=None)[0]["question"] == "q"
    assert len(calls["get_object"]) == 3 + 3 and len(calls["head_object"]) >= 2
    assert delays == [1.0, 1.0, 2.0, 4.0] and storage.retry_count == 4     # config.yaml check, then the reads


def test_a_failed_s3_write_leaves_the_old_object(s3_server):
    """An exception during a write commits nothing (an s3fs file left by an exception would
    upload what it had been given so far)."""
    path = "s3://test-bucket/last.ckpt"
    storage.write_bytes_atomic(path, b"old complete bytes")

    def fail():
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        storage.write_bytes_atomic(path, b"new bytes that never finish", midway=fail)
    assert get_object("last.ckpt") == b"old complete bytes"


def restart_server_at_first_backoff(s3_server, monkeypatch):
    """Make storage's backoff, instead of sleeping, record its waits and start a new moto
    server on the stopped one's port at the first of them; returns (servers started, waits)."""
    from moto.server import ThreadedMotoServer

    port = int(s3_server.rsplit(":", 1)[1])
    restarted, waits = [], []

    def restart_then_sleep(seconds):
        waits.append(seconds)
        if not restarted:
            restarted.append(ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False))
            restarted[0].start()
    monkeypatch.setattr(storage, "time", types.SimpleNamespace(sleep=restart_then_sleep))
    return restarted, waits


def test_training_survives_the_s3_server_restarting_during_a_checkpoint_upload(s3_server, request, monkeypatch,
                                                                              caplog, capsys):
    """The moto server is stopped as the run starts its 2nd checkpoint upload (epoch 0's
    last.ckpt) and restarted on the same port when storage backs off for the first time
    (moto's in-process backend keeps the bucket across the restart); the upload's first
    attempt fails (after s3fs's and botocore's own quick retries), the second succeeds, and
    the run goes on to write its later checkpoints to the restarted server."""
    restarted, waits = restart_server_at_first_backoff(s3_server, monkeypatch)

    real_write, checkpoint_writes = storage.write_bytes_atomic, []

    def write(path, data, midway=None):
        if path.endswith(".ckpt"):
            checkpoint_writes.append(path)
            if len(checkpoint_writes) == 2:
                request.node.moto_server.stop()
        return real_write(path, data, midway)
    monkeypatch.setattr(storage, "write_bytes_atomic", write)
    caplog.set_level(logging.WARNING, logger="storage")
    run = "s3://test-bucket/runs/restart"
    argv = ["--storage-path", "s3://test-bucket/runs", "--name", "restart", "--train-dataset-length", "8",
            "--test-dataset-length", "2", "--batch-size", "4", "--max-epochs", "2", "--val-generations", "0",
            "--num-sanity-val-steps", "0", "--max-length", "64", "--log-every-n-steps", "1", "--lr", "1e-3",
            "--s3-retries", "3", "--s3-retry-delay", "0.5"]
    try:
        assert train.main(argv) == 0
        assert "Done: step 4." in capsys.readouterr().out
        assert checkpoint_writes == [f"{run}/checkpoints/{name}" for name in
                                     ["epoch=0-step=2.ckpt", "last.ckpt", "epoch=1-step=4.ckpt", "last.ckpt"]]
        assert restarted and waits == [0.5] and storage.retry_count == 1
        lines = [r.getMessage() for r in caplog.records if r.name == "storage"]
        assert len(lines) == 1 and lines[0].startswith(f"Writing {run}/checkpoints/last.ckpt failed (attempt 1/3): ")
        assert "Could not connect to the endpoint URL" in lines[0] and lines[0].endswith("; retrying in 0.5 s")
        # Everything the run wrote, before and after the restart, is on the restarted server, whole.
        fs = storage.filesystem(run)
        fs.invalidate_cache()
        assert storage.listdir(f"{run}/checkpoints") == ["epoch=0-step=2.ckpt", "epoch=1-step=4.ckpt", "last.ckpt"]
        for name, step in [("epoch=0-step=2.ckpt", 2), ("epoch=1-step=4.ckpt", 4), ("last.ckpt", 4)]:
            assert storage.checkpoint_io().load_checkpoint(f"{run}/checkpoints/{name}")["global_step"] == step
        assert read_scalars(f"{run}/tensorboard")["storage/retries"] == [(4, 1.0)]
    finally:
        storage.configure_retries(5, 1.0)
        for server in restarted:
            server.stop()


def test_tensorboard_flushes_are_retried_across_a_server_restart(s3_server, request, monkeypatch, caplog):
    """TensorBoard's own S3 layer (boto3) writes the events; the trainer's logger retries its
    flushes. The moto server is stopped before a flush and restarted at the first backoff: the
    flush's first attempt fails (after botocore's own retries), the second uploads every event."""
    restarted, waits = restart_server_at_first_backoff(s3_server, monkeypatch)
    storage.configure_retries(3, 0.5)
    caplog.set_level(logging.WARNING, logger="storage")
    run = "s3://test-bucket/runs/tb"
    logger = callbacks.tensorboard_logger(run)
    try:
        logger.log_metrics({"train/loss": 2.0}, step=0)
        logger.save()
        request.node.moto_server.stop()
        logger.log_metrics({"train/loss": 1.0}, step=1)
        logger.save()
        logger.log_metrics({"train/loss": 0.5}, step=2)
        logger.finalize("success")
        assert waits == [0.5] and storage.retry_count == 1
        lines = [r.getMessage() for r in caplog.records if r.name == "storage"]
        assert len(lines) == 1 and lines[0].startswith(f"Writing TensorBoard events to {run}/tensorboard failed "
                                                       f"(attempt 1/3): Could not connect to the endpoint URL")
        assert read_scalars(f"{run}/tensorboard")["train/loss"] == [(0, 2.0), (1, 1.0), (2, 0.5)]
    finally:
        storage.configure_retries(5, 1.0)
        for server in restarted:
            server.stop()
