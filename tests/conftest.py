"""Shared fixtures: paths to the bundled model and data and to ../shared/data."""
import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SHARED_DATA = REPO.parent / "shared" / "data"
EMBEDDED_MODEL = REPO / "embedded" / "model"
HH_RLHF = SHARED_DATA / "hh-rlhf" / "harmless-base-test-part1.jsonl.gz"

# Keep tests off the network and quiet; they only ever load local folders.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


@pytest.fixture(scope="session")
def tokenizer():
    from module import load_tokenizer
    return load_tokenizer(str(EMBEDDED_MODEL))
