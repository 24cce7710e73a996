"""Paths that may be local folders or fsspec URLs (s3://bucket/prefix, gs://, ...).

Run folders, checkpoints and configs go through these helpers so that the same code
writes to ./runs or to S3. S3 goes through s3fs (and TensorBoard's own boto3 writer) with
credentials from the standard AWS environment variables; an S3-compatible endpoint is
taken from AWS_ENDPOINT_URL (or S3_ENDPOINT, TensorBoard's name for it). Nothing here
ever reads, prints or stores a credential.
"""
from __future__ import annotations

import os
import uuid


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


def exists(path: str) -> bool:
    return filesystem(path).exists(str(path))


def isdir(path: str) -> bool:
    return filesystem(path).isdir(str(path))


def listdir(path: str) -> list[str]:
    """Base names of the entries in a folder ([] if it does not exist)."""
    fs = filesystem(path)
    if not fs.isdir(str(path)):
        return []
    return sorted(basename(p) for p in fs.ls(str(path), detail=False))


def read_text(path: str) -> str:
    with filesystem(path).open(str(path), "r", encoding="utf-8") as f:
        return f.read()


def write_text_atomic(path: str, text: str) -> None:
    """Write to a temporary name beside `path`, then move it into place, so a reader never
    sees a half-written file (an S3 object only appears once its upload completes)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str, data: bytes, midway=None) -> None:
    """write_text_atomic for bytes (figures, checkpoints). Locally the bytes go to a hidden
    temporary file in the same folder (same file system, so the rename is atomic), are synced
    to disk, then renamed over `path`. An object store needs no temporary name: an S3 object
    (s3fs uploads on close, multipart parts stay invisible until completed) only appears once
    its upload is complete, and a failed upload leaves the previous object in place.
    `midway`, a test hook, is called once half the bytes are written."""
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
    with filesystem(path).open(path, "wb") as f:
        f.write(data[:half])
        if midway:
            midway()
        f.write(data[half:])


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
    stop half-way (the first half on disk), create the file MARKER and wait to be killed."""
    import io
    import logging
    import time

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
            return super().load_checkpoint(path, map_location=map_location or "cpu", weights_only=True)

        def remove_checkpoint(self, path):
            path = str(path)
            others = [e for e in listdir(parent(path)) if e.endswith(".ckpt") and e != basename(path)]
            if not others:
                log.warning("kept %s: it is the only checkpoint left in its folder", path)
                return
            super().remove_checkpoint(path)

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
