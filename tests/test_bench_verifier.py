"""bench/verifier.py: one tiny run of both methods on the embedded model."""
import importlib.util
import json

from conftest import EMBEDDED_MODEL, REPO

spec = importlib.util.spec_from_file_location("bench_verifier", REPO / "bench" / "verifier.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


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
