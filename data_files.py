"""A data set's splits from a Hub name (`load_dataset`), a local file (.json/.jsonl/.csv/.parquet,
optionally .gz), a `save_to_disk` folder, or a folder of such files whose names give the splits;
and the choice of the split a run trains or tests on. A file is read once before Arrow reads
it, so that a bad line is named by its number.

    splits = load_splits("../shared/data/hh-rlhf/harmless-base-test-part1.jsonl.gz")
    rows = pick_split(splits, "test", "dpo", name)     # a held-out part of train where there is no test
"""
from __future__ import annotations

import os

import numpy as np

from errors import UserError, first_line

PREFERENCE_TYPES = ("dpo", "bt", "orpo")        # rows are chosen/rejected pairs
# Types that read preference data sets (kto: unpaired rows, or pairs it unpairs): their train_prefs/test_prefs splits.
PREFERENCE_SPLIT_TYPES = PREFERENCE_TYPES + ("kto",)
# Split names each request may resolve to, in order of preference.
SPLIT_ALIASES = {
    "train": {"sft": ("train_sft", "train"), "pref": ("train_prefs", "train")},
    "test": {"sft": ("test_sft", "test", "validation", "valid", "val"),
             "pref": ("test_prefs", "test", "validation", "valid", "val")},
}
# A held-out split made from `train` when the source has none. A constant seed (not
# --seed) so runs with different seeds are evaluated on the same rows.
HELDOUT_SEED = 1234
HELDOUT_FRACTION = 0.1
HELDOUT_MAX_ROWS = 1000
DATA_EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")


class DataError(UserError, ValueError):
    """A user's data is unusable; the message is one sentence naming data set, row and field."""


def _strip_compression(path: str) -> str:
    return path[:-3] if path.endswith(".gz") else path


def _file_builder(path: str) -> str:
    ext = os.path.splitext(_strip_compression(path))[1]
    return {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}[ext]


def _is_data_file(path: str) -> bool:
    return _strip_compression(path).endswith(DATA_EXTENSIONS)


def _check_text(path: str) -> None:
    """Read a JSON Lines, JSON or CSV file (gzipped or not) once before Arrow does, so that a
    truncated gzip, a non-UTF-8 byte or a JSON Lines line that is not a JSON object is named by
    its line; Arrow's own errors name no line, and some arrive with a logged traceback."""
    import codecs
    import gzip
    import json
    import zlib
    lines = _strip_compression(path).endswith(".jsonl")
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                try:
                    text = raw.decode("utf-8") if lines else decoder.decode(raw)
                except UnicodeDecodeError as e:
                    raise DataError(f"Data file {path}, line {number}: not UTF-8 text (byte 0x{raw[e.start]:02x} "
                                    f"at column {e.start + 1}).") from None
                if not lines or not text.strip():
                    continue
                try:
                    value = json.loads(text)
                except json.JSONDecodeError as e:
                    raise DataError(f"Data file {path}, line {number}: not valid JSON ({e.msg} at column "
                                    f"{e.colno}).") from None
                if not isinstance(value, dict):
                    raise DataError(f"Data file {path}, line {number}: expected a JSON object, "
                                    f"got {type(value).__name__}.")
    except (EOFError, OSError, zlib.error) as e:
        raise DataError(f"Data file {path} is truncated or not valid gzip ({first_line(e)}).") from None


def _load_file(path: str):
    import datasets
    if os.path.getsize(path) == 0:      # the json builder would fail with a bare StopIteration
        raise DataError(f"Data file {path} is empty.")
    if not _strip_compression(path).endswith(".parquet"):
        _check_text(path)
    try:
        return datasets.load_dataset(_file_builder(path), data_files=path, split="train")
    except Exception as e:  # noqa: BLE001 - arrow/json errors come in many types
        raise DataError(f"Could not read data file {path}: {first_line(e)}") from None


def load_splits(name_or_path: str) -> dict:
    """Return {split_name: datasets.Dataset} for a Hub name, file, or folder."""
    import datasets
    if os.path.isfile(name_or_path):
        if not _is_data_file(name_or_path):
            raise DataError(f"Data file {name_or_path} has an unsupported extension "
                            f"(expected one of {', '.join(DATA_EXTENSIONS)}, optionally .gz).")
        return {"train": _load_file(name_or_path)}
    if os.path.isdir(name_or_path):
        if any(os.path.exists(os.path.join(name_or_path, f))
               for f in ("dataset_dict.json", "state.json", "dataset_info.json")):
            loaded = datasets.load_from_disk(name_or_path)
            return dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
        files = sorted(f for f in os.listdir(name_or_path) if _is_data_file(f))
        if not files:
            raise DataError(f"Data folder {name_or_path} holds no data files "
                            f"({', '.join(DATA_EXTENSIONS)}) and is not a save_to_disk folder.")
        # The file's stem names the split: train.jsonl -> train, test_prefs.jsonl.gz -> test_prefs.
        return {os.path.splitext(_strip_compression(f))[0]: _load_file(os.path.join(name_or_path, f))
                for f in files}
    if name_or_path.startswith((".", "/", "~")) or _is_data_file(name_or_path):
        raise DataError(f"Data set path {name_or_path} does not exist.")
    try:
        return dict(datasets.load_dataset(name_or_path))
    except Exception as e:  # noqa: BLE001 - hub errors come in many types
        raise DataError(f"Could not load data set '{name_or_path}' from the Hugging Face Hub "
                        f"(no such local path either): {first_line(e)}") from None


def pick_split(splits: dict, split: str, training_type: str, name: str):
    """Choose the source split for `train`/`test`. A source with no test split is split
    once, with a constant seed, into train and held-out rows (each kept in source order)."""
    kind = "pref" if training_type in PREFERENCE_SPLIT_TYPES else "sft"
    train_name = next((c for c in SPLIT_ALIASES["train"][kind] if c in splits), None)
    test_name = next((c for c in SPLIT_ALIASES["test"][kind] if c in splits), None)
    if split == "test" and test_name is not None:
        return splits[test_name]
    if train_name is None:
        raise DataError(f"Data set {name} has no '{split}' split (found: {', '.join(splits)}).")
    train = splits[train_name]
    if test_name is not None:
        return train
    if len(train) < 2:
        raise DataError(f"Data set {name} has {len(train)} row(s): too few to hold some out for testing.")
    n_test = max(1, min(HELDOUT_MAX_ROWS, int(round(HELDOUT_FRACTION * len(train)))))
    order = np.random.default_rng(HELDOUT_SEED).permutation(len(train))
    keep = order[:n_test] if split == "test" else order[n_test:]
    return train.select(np.sort(keep))
