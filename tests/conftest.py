"""Shared fixtures: paths to the bundled model and data and to ../shared/data."""
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from plots import read_scalars  # noqa: E402,F401 - tests import it from here
SHARED_DATA = REPO.parent / "shared" / "data"
EMBEDDED_MODEL = REPO / "embedded" / "model"
HH_RLHF = SHARED_DATA / "hh-rlhf" / "harmless-base-test-part1.jsonl.gz"

# TensorBoard's S3 reader takes S3_ENDPOINT once, when its module is first imported, and keeps
# it for the process: imported here, before any test's moto server sets it, it leaves the
# endpoint to boto3, which reads each test's AWS_ENDPOINT_URL when it makes a client.
import tensorboard.compat.tensorflow_stub.io.gfile  # noqa: E402,F401

# Keep tests off the network and quiet; they only ever load local folders.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Checkpoints used as --model-name are exported into this cache: one per test session.
os.environ["POST_TRAINING_CACHE"] = tempfile.mkdtemp(prefix="post-training-cache-")


# The suite writes tens of GB of checkpoints (a SmolLM2 one with its optimizer is 1.6 GB), and
# pytest keeps every test's folder to the session's end: one CI run filled its disk. A passed
# test's tmp_path goes at once (tmp_path_retention_policy = failed in pytest.ini); a module's
# tmp_path_factory folders go when the module ends with no failure; the cache at the end.
@pytest.fixture(scope="module", autouse=True)
def _module_folders_removed_after_passing(request, tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    before, failed = set(base.iterdir()), request.session.testsfailed
    yield
    if request.session.testsfailed == failed:
        for path in set(base.iterdir()) - before:
            # pytest also links "<name>current" to a folder: a link is unlinked, not followed.
            path.unlink() if path.is_symlink() else shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _cache_removed_at_the_end():
    yield
    shutil.rmtree(os.environ["POST_TRAINING_CACHE"], ignore_errors=True)


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


@pytest.fixture(scope="session")
def tokenizer():
    from models import load_tokenizer
    return load_tokenizer(str(EMBEDDED_MODEL))


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3_server(monkeypatch, request):
    """A real S3 endpoint: moto's server on a free loopback port, dummy credentials set only
    for this test, one bucket "test-bucket". Yields the endpoint URL; stops the server, which
    a test may stop earlier itself (request.node.moto_server; stopping twice is harmless)."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    request.node.moto_server = server
    endpoint = f"http://127.0.0.1:{port}"
    for key, value in {"AWS_ACCESS_KEY_ID": "test-key-id", "AWS_SECRET_ACCESS_KEY": "test-secret",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint,
                       "S3_ENDPOINT": endpoint}.items():
        monkeypatch.setenv(key, value)
    # moto keeps its buckets in process-wide memory: start every test from an empty store.
    import urllib.request
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")).close()
    boto3.client("s3").create_bucket(Bucket="test-bucket")
    # fsspec keeps one S3FileSystem per set of arguments for the process, and an instance made
    # in an earlier test would still point at that test's (stopped) server.
    import s3fs
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        yield endpoint
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()
