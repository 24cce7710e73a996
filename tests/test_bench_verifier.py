"""bench/verifier.py: the AUROC it prints, and one tiny run of both methods on the embedded model."""
import importlib.util
import json
import math

import pytest

from conftest import EMBEDDED_MODEL, REPO

spec = importlib.util.spec_from_file_location("bench_verifier", REPO / "bench" / "verifier.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_auroc_hand_worked():
    """Positives 0.9, 0.4; negatives 0.4, 0.1: of the 4 (pos, neg) pairs 0.9 beats both, 0.4
    ties 0.4 (half) and beats 0.1: (1 + 1 + 0.5 + 1) / 4 = 0.875."""
    assert bench.auroc([0.9, 0.4, 0.4, 0.1], [True, True, False, False]) == pytest.approx(0.875)
    assert bench.auroc([0.1, 0.9], [True, False]) == 0.0
    assert math.isnan(bench.auroc([0.5], [True]))                             # no negatives


def test_tiny_run_writes_both_methods(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--model", str(EMBEDDED_MODEL), "--num-problems", "2", "--fixed-k", "2", "--k-min", "1",
                       "--k-max", "2", "--step", "1", "--tau", "0.05", "--max-new-tokens", "8",
                       "--json", str(out)]) == 0
    fixed, adaptive = json.loads(out.read_text())
    assert fixed["method"] == "fixed K=2" and fixed["solutions"] == adaptive["solutions"] == 4
    assert fixed["mean_k"] == 2.0 and 1.0 <= adaptive["mean_k"] <= 2.0
    assert 0.0 <= fixed["accuracy"] <= 1.0 and 0.0 <= adaptive["auroc"] <= 1.0
    assert "| fixed K=2 | 4 | 2.0 |" in capsys.readouterr().out
