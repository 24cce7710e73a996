"""embedded/build.py rebuilds the bundled data and tokenizer byte for byte (fixed seeds),
and the bundled model loads the way Hub models load."""
import subprocess
import sys

import pytest
import torch

from conftest import EMBEDDED_MODEL, REPO


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory):
    out = tmp_path_factory.mktemp("embedded")
    subprocess.run([sys.executable, str(REPO / "embedded" / "build.py"), "--skip-pretrain", "--out", str(out)],
                   check=True, capture_output=True, cwd=str(out))
    return out


@pytest.mark.parametrize("path", ["data/sft/train.jsonl", "data/sft/test.jsonl", "data/prefs/train_prefs.jsonl",
                                  "data/prefs/test_prefs.jsonl", "data/problems/train.jsonl",
                                  "data/problems/test.jsonl", "model/tokenizer.json", "model/tokenizer_config.json",
                                  "model/chat_template.jinja"])
def test_build_is_deterministic(rebuilt, path):
    assert (rebuilt / path).read_bytes() == (REPO / "embedded" / path).read_bytes()


def test_bundled_model_loads_like_a_hub_model(tokenizer):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(EMBEDDED_MODEL))
    assert type(model).__name__ == "Qwen2ForCausalLM" and model.config.vocab_size == len(tokenizer) == 1129
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    # Digits are single tokens, as in Qwen's tokenizer, so arithmetic is learnable.
    assert [tokenizer.decode([t]) for t in tokenizer("1234", add_special_tokens=False)["input_ids"]] == ["1", "2", "3", "4"]
    assert sum(p.numel() for p in model.parameters()) == 933_120
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 313, 201]])).logits).all()
