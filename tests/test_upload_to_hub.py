"""upload_to_hub.py: a checkpoint becomes a Hugging Face folder that loads with from_pretrained
and gives the checkpoint's logits; no secret, optimizer state or absolute path in it; the
upload goes through huggingface_hub's HfApi (stubbed: the Hub is unreachable here)."""
import os

import pytest
import torch

import train
import upload_to_hub
from conftest import REPO


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    storage = tmp_path_factory.mktemp("runs")
    assert train.main(["--storage-path", str(storage), "--name", "exp", "--train-dataset-length", "16",
                       "--test-dataset-length", "4", "--val-generations", "0", "--lr", "1e-3"]) == 0
    return storage / "exp"


def test_export_round_trip_logits_and_card(trained, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    monkeypatch.setenv("HF_TOKEN", "hf_fake_secret_value_123")
    out = tmp_path / "export"
    assert upload_to_hub.main(["--checkpoint-path", str(trained), "--output-dir", str(out),
                               "--training-type", "sft"]) == 0
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "README.md"} <= \
        set(os.listdir(out))
    model = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    ckpt = torch.load(trained / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    reference = AutoModelForCausalLM.from_pretrained(str(REPO / "embedded" / "model")).eval()
    reference.load_state_dict({k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()})
    ids = torch.tensor([tokenizer("<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=0, atol=1e-5)
        assert not torch.equal(model(ids).logits,
                               AutoModelForCausalLM.from_pretrained(str(REPO / "embedded" / "model"))(ids).logits)
    card = (out / "README.md").read_text()
    assert "base_model: embedded/model" in card and "| `lr` | `0.001` |" in card and "for 2 optimizer steps" in card
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"hf_fake_secret_value_123" not in data and str(REPO).encode() not in data
            assert b"optimizer_states" not in data


def test_upload_goes_through_hfapi(trained, monkeypatch):
    calls = []

    class FakeApi:
        def __init__(self, token):
            calls.append(("token", token))

        def create_repo(self, repo_id, private, exist_ok):
            calls.append(("create_repo", repo_id, private))

        def upload_folder(self, repo_id, folder_path, commit_message):
            calls.append(("upload_folder", repo_id, sorted(os.listdir(folder_path))))

    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token")
    assert upload_to_hub.main(["--checkpoint-path", str(trained), "--repo-id", "me/tiny-sft"]) == 0
    assert calls[0] == ("token", "hf_fake_token") and calls[1] == ("create_repo", "me/tiny-sft", True)
    assert calls[2][0] == "upload_folder" and "model.safetensors" in calls[2][2]


def test_wrong_training_type_is_one_sentence(trained, tmp_path, capsys):
    assert upload_to_hub.main(["--checkpoint-path", str(trained), "--output-dir", str(tmp_path / "x"),
                               "--training-type", "dpo"]) == 2
    assert "is a sft checkpoint, not dpo" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
