"""experiments/bt_anchor.py --validation: the part a variant is chosen on holds none of the
160 test pairs that the chosen variant is then scored on."""
import json

from data_files import load_splits, pick_split
from experiments.bt_anchor import training_part
from experiments.real_prefs import DATA_PATH


def _keys(rows) -> set[str]:
    return {json.dumps([r["chosen"], r["rejected"]], sort_keys=True) for r in rows}


def test_the_validation_part_is_the_training_split_and_never_the_test_pairs(tmp_path):
    splits = load_splits(DATA_PATH)
    train, test = (_keys(pick_split(splits, part, "bt", DATA_PATH)) for part in ("train", "test"))
    folder = training_part(DATA_PATH, str(tmp_path / "anchor-train"))
    inner = load_splits(folder)
    fit, validation = (_keys(pick_split(inner, part, "bt", folder)) for part in ("train", "test"))
    assert len(test) == 160 and len(validation) > 100
    assert fit | validation == train and not fit & validation
    assert not validation & test and not fit & test
