"""bench/lora_memory.py on a tiny configuration (the bundled model, 2 pairs of 64 tokens, 2 steps):
the LoRA run trains, and changes, only the adapters, with AdamW state for them alone; the full run
trains every weight; both start at ln 2 on the same tokens, with no reference copy loaded. No
memory or timing asserts: the figures are the benchmark's, recorded in bench/README.md."""
import json
import math
import subprocess
import sys

import pytest
import torch

from adapters import DECODER_TARGETS
from conftest import EMBEDDED_MODEL, HH_RLHF, REPO

R = 4


@pytest.mark.skipif(not HH_RLHF.exists(), reason="needs the hh-rlhf slice in ../shared/data")
def test_lora_trains_only_the_adapters(tmp_path):
    out = tmp_path / "lora.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "lora_memory.py"), "--model", str(EMBEDDED_MODEL),
                           "--configs", "full,lora", "--lora-r", str(R), "--steps", "2", "--max-length", "64",
                           "--lr", "1e-3", "--threads", "1", "--json", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    rows, runs = {r["config"]: r for r in result["rows"]}, result["runs"]
    from transformers import AutoModelForCausalLM
    base = AutoModelForCausalLM.from_pretrained(EMBEDDED_MODEL, dtype=torch.float32)
    targeted = [m for n, m in base.named_modules() if isinstance(m, torch.nn.Linear) and n.split(".")[-1] in DECODER_TARGETS]
    base_params = sum(p.numel() for p in base.parameters())

    full, lora = rows["full"], rows["lora"]
    assert full["trainable_params"] == full["total_params"] == base_params
    # Every weight trains and moves, each with AdamW state.
    assert full["changed_tensors"] == full["optimizer_state_tensors"] == len(list(base.parameters()))
    assert full["changed_adapter_tensors"] == 0

    # LoRA: A (r x in) and B (out x r) on each targeted projection, nothing else.
    adapter_params = sum(R * (m.in_features + m.out_features) for m in targeted)
    assert lora["trainable_params"] == adapter_params and lora["total_params"] == base_params + adapter_params
    assert all("lora_A" in n or "lora_B" in n for n in runs["lora"]["trainable_names"])
    # Only the adapters changed (the frozen base's checksums are equal), and AdamW holds state for them alone.
    assert lora["changed_tensors"] == lora["changed_adapter_tensors"] == 2 * len(targeted)
    assert lora["optimizer_state_adapter_only"] and lora["optimizer_state_tensors"] == 2 * len(targeted)
    assert lora["optimizer_state_mib"] < full["optimizer_state_mib"]

    # The same tokens; the policy starts as the reference (LoRA's B is zero), so DPO's loss starts at ln 2.
    assert runs["lora"]["tokens_per_step"] == runs["full"]["tokens_per_step"]
    for row in (full, lora):
        assert abs(row["first_loss"] - math.log(2)) < 1e-5 and not row["reference_copy_loaded"]
    assert "| lora | precomputed |" in proc.stdout and "lora / full peak RSS" in proc.stdout
