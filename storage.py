"""Paths that may be local folders or fsspec URLs (s3://bucket/prefix, gs://, ...).

Run folders, checkpoints and configs go through these helpers so that the same code
writes to ./runs or to S3. S3 goes through s3fs (and TensorBoard's own boto3 writer) with
credentials from the standard AWS environment variables; an S3-compatible endpoint is
taken from AWS_ENDPOINT_URL (or S3_ENDPOINT, TensorBoard's name for it). Nothing here
ever reads, prints or stores a credential.

Transient errors of a remote store (connection refused or reset, timeouts, HTTP 5xx,
throttling) are retried with exponential backoff by `retrying`, which every read and write
below goes through for URLs; each retry is logged and counted (`retry_count`).
"""
from __future__ import annotations

import logging
import os
import time
import uuid

from errors import UserError

log = logging.getLogger("storage")


def is_url(path: str) -> bool:
    return "://" in str(path)


def join(base: str, *parts: str) -> str:
    base = str(base)
    if is_url(base):
        return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])
    return os.path.join(base, *parts)


def parent(path: str) -> str:
    path = str(path).rstrip("/")
    if is_url(path):
        return path.rsplit("/", 1)[0]
    return os.path.dirname(path)


def basename(path: str) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def absolute(path: str) -> str:
    """Local paths made absolute (Ray needs that for storage_path); URLs unchanged."""
    return str(path) if is_url(path) else os.path.abspath(os.path.expanduser(str(path)))


def filesystem(path: str):
    """The fsspec filesystem for a path or URL (s3fs for s3://, with the endpoint from the env)."""
    import fsspec
    protocol = str(path).split("://", 1)[0] if is_url(path) else "file"
    options = {}
    if protocol in ("s3", "s3a"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("S3_ENDPOINT")
        if endpoint:
            options["client_kwargs"] = {"endpoint_url": endpoint}
    return fsspec.filesystem(protocol, **options)


class StorageError(UserError, OSError):
    """A remote read or write still failed after every retry; the message is one sentence."""


# Set from train.py's --s3-retries and --s3-retry-delay; other scripts keep these defaults.
RETRY_ATTEMPTS = 5
RETRY_DELAY = 1.0           # seconds before the 2nd attempt, doubling after each failure
RETRY_MAX_DELAY = 30.0      # an outage longer than a few minutes is not transient
retry_count = 0             # transient errors retried in this process, reported at a run's end

# Error codes S3 (and S3-compatible stores) answer when the request may succeed later.
TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError",
                   "ServiceUnavailable", "503"}


def configure_retries(attempts: int, delay: float) -> None:
    """Set at a run's start; the count starts again, so a run reports its own retries."""
    global RETRY_ATTEMPTS, RETRY_DELAY, retry_count
    RETRY_ATTEMPTS, RETRY_DELAY, retry_count = max(1, int(attempts)), float(delay), 0


def is_transient(error: BaseException) -> bool:
    """Whether a remote store's error may go away on its own (a restarted endpoint, a dropped
    connection, throttling, a 5xx). Missing buckets or keys, refused access and missing
    credentials are permanent. s3fs turns a ClientError into an OSError caused by it, so the
    chain of causes is followed."""
    import botocore.exceptions as boto
    try:
        from aiohttp import ClientConnectionError, ClientPayloadError
        connection_errors = (ClientConnectionError, ClientPayloadError)
    except ImportError:
        connection_errors = ()
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (FileNotFoundError, PermissionError, FileExistsError, IsADirectoryError,
                              NotADirectoryError)):
            return False
        # botocore's ConnectionError: EndpointConnectionError (refused), connect timeouts;
        # HTTPClientError: ConnectionClosedError, read timeouts; the built-in ConnectionError:
        # refused and reset sockets.
        if isinstance(error, (boto.ConnectionError, boto.HTTPClientError, ConnectionError, TimeoutError,
                              *connection_errors)):
            return True
        if isinstance(error, boto.ClientError):
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            return status >= 500 or error.response.get("Error", {}).get("Code") in TRANSIENT_CODES
        error = error.__cause__
    return False


def retrying(action: str, path: str, call):
    """Return call(), retrying transient errors of a URL's store with exponential backoff
    (RETRY_DELAY, doubling, capped at RETRY_MAX_DELAY; RETRY_ATTEMPTS attempts in all).
    `call` must redo the whole operation: an upload sends the whole buffer again. Permanent
    errors and local paths are not retried; the last failure raises StorageError."""
    global retry_count
    path = str(path)
    for attempt in range(1, RETRY_ATTEMPTS + 1):
        try:
            return call()
        except Exception as e:  # noqa: BLE001 - is_transient decides
            if not is_url(path) or not is_transient(e):
                raise
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0].rstrip(".")
            if attempt == RETRY_ATTEMPTS:
                raise StorageError(f"{action} {path} failed {attempt} times in a row, the last time with: "
                                   f"{reason}.") from e
            wait = min(RETRY_DELAY * 2 ** (attempt - 1), RETRY_MAX_DELAY)
            retry_count += 1
            log.warning("%s %s failed (attempt %d/%d): %s; retrying in %.1f s", action, path, attempt,
                        RETRY_ATTEMPTS, reason, wait)
            time.sleep(wait)


def exists(path: str) -> bool:
    return retrying("Checking", path, lambda: filesystem(path).exists(str(path)))


def isdir(path: str) -> bool:
    return retrying("Checking", path, lambda: filesystem(path).isdir(str(path)))


def listdir(path: str) -> list[str]:
    """Base names of the entries in a folder ([] if it does not exist)."""
    def entries():
        fs = filesystem(path)
        if not fs.isdir(str(path)):
            return []
        return sorted(basename(p) for p in fs.ls(str(path), detail=False))
    return retrying("Listing", path, entries)


def read_bytes(path: str) -> bytes:
    return retrying("Reading", path, lambda: filesystem(path).cat_file(str(path)))


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def write_text_atomic(path: str, text: str) -> None:
    """Write to a temporary name beside `path`, then move it into place, so a reader never
    sees a half-written file (an S3 object only appears once its upload completes)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str, data: bytes, midway=None) -> None:
    """write_text_atomic for bytes (figures, checkpoints). Locally the bytes go to a hidden
    temporary file in the same folder (same file system, so the rename is atomic), are synced
    to disk, then renamed over `path`. An object store needs no temporary name: the whole
    buffer goes up in one request (pipe_file: one PUT, or a multipart upload that is aborted
    on failure), an S3 object only appears once its upload is complete, and a failed upload
    leaves the previous object in place; transient failures are retried (`retrying`), each
    attempt sending the whole buffer again. Not an s3fs file opened for writing: leaving its
    `with` block on an exception still commits what was written so far.
    `midway`, a test hook, is called once half the bytes are written (locally) or before
    the upload starts (URLs)."""
    path = str(path)
    half = len(data) // 2 if midway else len(data)
    if not is_url(path):
        folder, name = os.path.split(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".{name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            with open(tmp, "wb") as f:
                f.write(data[:half])
                if midway:
                    f.flush()
                    os.fsync(f.fileno())
                    midway()
                f.write(data[half:])
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return
    if midway:
        midway()
    retrying("Writing", path, lambda: filesystem(path).pipe_file(path, data))


def link_atomic(source: str, path: str) -> None:
    """Make the local `path` a hard link to the local file `source`, replacing what `path` was
    atomically (a link under a temporary name, then a rename), so a reader finds the old file or
    the new one, whole. The two names share the bytes: removing either leaves the other."""
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.link(source, tmp)
    try:
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def load_torch(path: str, map_location="cpu"):
    """torch.load of a checkpoint file (weights only): a URL is read whole, with retries, before
    unpickling (a half-read stream would fail with no retry); a local file is memory-mapped,
    so tensors nobody touches (the weights, when only metadata is wanted) are not read."""
    import io

    import torch
    if is_url(path):
        return torch.load(io.BytesIO(read_bytes(path)), map_location=map_location, weights_only=True)
    return torch.load(str(path), map_location=map_location, weights_only=True, mmap=True)


def info(path: str) -> dict:
    return retrying("Checking", path, lambda: filesystem(path).info(str(path)))


TMP_MARK = ".tmp-"
CHECKPOINT_WRITE_HOOK = "TRAINER_CKPT_WRITE_HOOK"


def checkpoint_io():
    """Lightning's CheckpointIO for local and s3:// runs, crash-safe: a checkpoint is serialised
    in memory and written with write_bytes_atomic, so a process killed during a save leaves the
    previous file of that name whole and no partial file under a checkpoint's name (Lightning's
    own writer, inside an fsspec transaction, stages local files in the system temp folder and
    moves them across file systems, which is a copy). Loading is weights-only; removing never
    deletes the last complete checkpoint of a folder. Stale temporary files of killed processes
    are removed after the next successful save into the same folder.

    Test hook: TRAINER_CKPT_WRITE_HOOK="N:MARKER" makes the N-th checkpoint write of the process
    stop half-way (locally the first half on disk; on S3 before the upload, which is one
    request), create the file MARKER and wait to be killed."""
    import io

    import torch
    from lightning.fabric.plugins import TorchCheckpointIO

    log = logging.getLogger("train")

    class AtomicCheckpointIO(TorchCheckpointIO):
        writes = 0

        def save_checkpoint(self, checkpoint, path, storage_options=None):
            if storage_options is not None:
                raise TypeError("storage_options are not supported by this trainer's checkpoint writer.")
            buffer = io.BytesIO()
            torch.save(checkpoint, buffer)
            AtomicCheckpointIO.writes += 1
            write_bytes_atomic(str(path), buffer.getvalue(), midway=self._hook())
            if not is_url(path):
                self._remove_stale_temporaries(os.path.dirname(os.path.abspath(str(path))))

        def load_checkpoint(self, path, map_location=None, weights_only=None):
            if is_url(path):    # read whole (and retried) before unpickling
                return load_torch(str(path), map_location or "cpu")
            return super().load_checkpoint(path, map_location=map_location or "cpu", weights_only=True)

        def remove_checkpoint(self, path):
            path = str(path)
            others = [e for e in listdir(parent(path)) if e.endswith(".ckpt") and e != basename(path)]
            if not others:
                log.warning("kept %s: it is the only checkpoint left in its folder", path)
                return
            retrying("Removing", path, lambda: super(AtomicCheckpointIO, self).remove_checkpoint(path))

        @staticmethod
        def _hook():
            spec = os.environ.get(CHECKPOINT_WRITE_HOOK)
            if not spec:
                return None
            n, marker = spec.split(":", 1)
            if AtomicCheckpointIO.writes != int(n):
                return None

            def stop():
                open(marker, "w").close()
                while True:
                    time.sleep(1)
            return stop

        @staticmethod
        def _remove_stale_temporaries(folder: str) -> None:
            mine = f"{TMP_MARK}{os.getpid()}-"
            for entry in os.listdir(folder):
                if entry.startswith(".") and TMP_MARK in entry and mine not in entry:
                    os.remove(os.path.join(folder, entry))

    return AtomicCheckpointIO()
