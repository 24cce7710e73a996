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


def write_bytes_atomic(path: str, data: bytes) -> None:
    """write_text_atomic for bytes (figures, binary files)."""
    path = str(path)
    if not is_url(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return
    with filesystem(path).open(path, "wb") as f:
        f.write(data)
