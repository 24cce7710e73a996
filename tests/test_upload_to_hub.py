"""upload_to_hub.py: a checkpoint becomes a Hugging Face folder that loads with from_pretrained
and gives the checkpoint's logits; no secret, optimizer state or absolute path in it; the
upload goes through huggingface_hub's HfApi (stubbed: the Hub is unreachable here)."""
import os

import pytest
import torch

import models
import train
import upload_to_hub
from conftest import REPO, read_scalars


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    storage = tmp_path_factory.mktemp("runs")
    assert train.main(["--storage-path", str(storage), "--name", "exp", "--train-dataset-length", "16",
                       "--test-dataset-length", "4", "--val-generations", "0", "--lr", "1e-3",
                       "--validate-before-training"]) == 0
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
    # Final metrics: the last val/* values of the run's TensorBoard events, at the checkpoint's step.
    scalars = read_scalars(trained / "tensorboard")
    assert "## Final metrics" in card and "at or before step 2" in card
    for tag in ("val/loss", "val/perplexity"):
        assert f"| `{tag}` | {scalars[tag][-1][1]:.4g} |" in card
    assert scalars["val/loss"][-1][1] < scalars["val/loss"][0][1]      # the trained value, not step 0's
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"hf_fake_secret_value_123" not in data and str(REPO).encode() not in data
            assert b"optimizer_states" not in data


@pytest.mark.parametrize("public", [False, True])
def test_upload_goes_through_hfapi(trained, monkeypatch, public):
    calls = []

    class FakeApi:
        def __init__(self, *args, **kwargs):
            calls.append(("HfApi", args, kwargs))

        def create_repo(self, *args, **kwargs):
            calls.append(("create_repo", args, kwargs))

        def upload_folder(self, *args, **kwargs):
            calls.append(("upload_folder", args, kwargs, sorted(os.listdir(kwargs["folder_path"]))))

    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token")
    assert upload_to_hub.main(["--checkpoint-path", str(trained), "--repo-id", "me/tiny-sft",
                               *(["--public"] if public else [])]) == 0
    assert calls[0] == ("HfApi", (), {"token": "hf_fake_token"})
    assert calls[1] == ("create_repo", ("me/tiny-sft",), {"private": not public, "exist_ok": True})
    name, args, kwargs, files = calls[2]
    assert name == "upload_folder" and args == () and len(calls) == 3
    assert kwargs == {"repo_id": "me/tiny-sft", "folder_path": kwargs["folder_path"],
                      "commit_message": "Upload from upload_to_hub.py"}
    assert files == ["README.md", "chat_template.jinja", "config.json", "generation_config.json",
                     "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert not os.path.exists(kwargs["folder_path"])          # the temporary export is removed


def test_upload_without_a_token_is_one_sentence(trained, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert upload_to_hub.main(["--checkpoint-path", str(trained), "--repo-id", "me/tiny-sft"]) == 2
    assert capsys.readouterr().err == "error: HF_TOKEN is not set; export a Hugging Face write token to upload.\n"


def test_bt_export_round_trip_logits(tmp_path, monkeypatch):
    """A bt checkpoint becomes an AutoModelForSequenceClassification folder with the
    checkpoint's weights: the same scores to 1e-5, no secret in any file."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    monkeypatch.setenv("HF_TOKEN", "hf_fake_secret_value_456")
    assert train.main(["--training-type", "bt", "--storage-path", str(tmp_path), "--name", "rm",
                       "--train-dataset-length", "16", "--test-dataset-length", "4", "--batch-size", "8",
                       "--lr", "1e-3", "--num-sanity-val-steps", "0"]) == 0
    out = tmp_path / "export"
    assert upload_to_hub.main(["--checkpoint-path", str(tmp_path / "rm" / "checkpoints" / "last.ckpt"),
                               "--output-dir", str(out), "--training-type", "bt"]) == 0
    model = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    ckpt = torch.load(tmp_path / "rm" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    reference = AutoModelForSequenceClassification.from_pretrained(str(REPO / "embedded" / "model"), num_labels=1)
    reference.load_state_dict({k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()})
    reference.config.pad_token_id = tokenizer.pad_token_id
    ids = torch.tensor([tokenizer("<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"
                                  "5<|im_end|>")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference.eval()(ids).logits, rtol=0, atol=1e-5)
    card = (out / "README.md").read_text()
    assert "AutoModelForSequenceClassification" in card and "| `val/accuracy` |" in card
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"hf_fake_secret_value_456" not in data and str(tmp_path).encode() not in data
            assert str(REPO).encode() not in data and b"optimizer_states" not in data


def test_wrong_training_type_is_one_sentence(trained, tmp_path, capsys):
    assert upload_to_hub.main(["--checkpoint-path", str(trained), "--output-dir", str(tmp_path / "x"),
                               "--training-type", "dpo"]) == 2
    assert "is a sft checkpoint, not dpo" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_export_in_a_worker_of_rank_1_writes_the_whole_folder(trained, tmp_path, monkeypatch):
    """A Ray worker of rank 1 (a process group is initialized there) exports a run folder it
    starts from: the weights and config are written too, not only on rank 0."""
    from transformers.distributed import mixin
    monkeypatch.setattr(mixin, "_is_torch_distributed_initialized", lambda: True)
    monkeypatch.setattr(mixin, "_get_torch_distributed_rank", lambda: 1)
    models.export(str(trained), str(tmp_path / "hf"))
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(tmp_path / "hf"))


def test_a_dpo_card_shows_its_loss_and_only_that_loss_hyper_parameters():
    from model_card import model_card
    base = {"training_type": "dpo", "model_name": "m", "dataset_name": "d", "beta": 0.1, "rpo_alpha": 0.0,
            "label_smoothing": 0.1, "simpo_gamma": 0.5}
    cdpo = model_card({**base, "dpo_loss": "cdpo"}, 3)
    assert "| `dpo_loss` | `cdpo` |" in cdpo and "| `label_smoothing` | `0.1` |" in cdpo
    assert "simpo_gamma" not in cdpo and "rpo_alpha" not in cdpo
    old = model_card(base, 3)                      # a config saved before --dpo-loss: sigmoid, with its rpo_alpha
    assert "| `rpo_alpha` | `0.0` |" in old and "label_smoothing" not in old
