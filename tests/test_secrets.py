"""Secret hygiene: with fake credentials in the environment (random values made here), a
training run, an export and an upload (HfApi stubbed) write none of them into any file or
log; trust_remote_code is off unless asked for; every torch.load in the repository loads
weights only (no pickled code)."""
import ast
import inspect
import os
import secrets

import pytest

import flags
import train
import upload_to_hub
from conftest import REPO

SECRET_VARS = ("HF_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "NVIDIA_API_KEY", "OPENAI_API_KEY")
SOURCES = sorted(p for p in REPO.rglob("*.py") if ".venv" not in p.parts and "site-packages" not in p.parts)


def files_under(*folders) -> dict:
    """Path -> bytes of every file under the folders."""
    return {p: p.read_bytes() for folder in folders for p in folder.rglob("*") if p.is_file()}


def test_no_secret_in_anything_a_run_export_or_upload_writes(tmp_path, monkeypatch, capfd, caplog):
    values = {name: f"fake-{name.lower()}-{secrets.token_hex(12)}" for name in SECRET_VARS}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    caplog.set_level("DEBUG")
    runs, export = tmp_path / "runs", tmp_path / "export"
    assert train.main(["--storage-path", str(runs), "--name", "run", "--max-steps", "2", "--batch-size", "2",
                       "--train-dataset-length", "8", "--test-dataset-length", "2", "--val-generations", "1",
                       "--val-max-new-tokens", "4", "--log-every-n-steps", "1", "--verbose"]) == 0
    assert upload_to_hub.main(["--checkpoint-path", str(runs / "run"), "--output-dir", str(export)]) == 0

    uploaded = {}

    class FakeApi:
        def __init__(self, token=None):
            self.token = token

        def create_repo(self, *args, **kwargs):
            uploaded["create_repo"] = repr((args, kwargs)).encode()

        def upload_folder(self, *, folder_path, **kwargs):
            uploaded["upload_folder"] = repr(kwargs).encode()
            for path in os.scandir(folder_path):
                with open(path.path, "rb") as f:
                    uploaded[path.name] = f.read()

    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert upload_to_hub.main(["--checkpoint-path", str(runs / "run"), "--repo-id", "me/secret-test"]) == 0

    written = files_under(runs, export)
    out, err = capfd.readouterr()
    logs = {"stdout": out.encode(), "stderr": err.encode(), "logging": caplog.text.encode()}
    names = {p.name for p in written}
    # What was scanned: the checkpoints, config, TensorBoard events (hparams included), the card.
    assert {"last.ckpt", "config.yaml", "README.md", "model.safetensors", "tokenizer.json"} <= names
    assert any(n.startswith("events.out.tfevents") for n in names) and "hparams.yaml" in names
    assert {"README.md", "model.safetensors", "upload_folder"} <= set(uploaded) and out
    for name, value in values.items():
        for where, data in [*written.items(), *uploaded.items(), *logs.items()]:
            assert value.encode() not in data, f"${name} found in {where}"


def test_trust_remote_code_is_off_by_default():
    assert flags.build_parser().parse_args([]).trust_remote_code is False
    import models
    loaders = [f for _, f in inspect.getmembers(models, inspect.isfunction) if "trust_remote_code" in
               inspect.signature(f).parameters]
    assert {f.__name__ for f in loaders} >= {"load_tokenizer", "load_causal_lm", "load_reward_model", "load_model",
                                             "load_trained"}
    # Every function in the repository that takes trust_remote_code defaults it to False, and no
    # call passes a literal True.
    checked = 0
    for path in SOURCES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args.args + node.args.kwonlyargs
                defaults = [None] * (len(node.args.args) - len(node.args.defaults)) + node.args.defaults + \
                    node.args.kw_defaults
                for arg, default in zip(args, defaults):
                    if arg.arg == "trust_remote_code":
                        checked += 1
                        assert isinstance(default, ast.Constant) and default.value is False, \
                            f"{path.name}:{node.lineno} {node.name}"
            if isinstance(node, ast.Call):
                for kw in node.keywords:
                    if kw.arg == "trust_remote_code":
                        assert not (isinstance(kw.value, ast.Constant) and kw.value.value is True), \
                            f"{path.name}:{node.lineno}"
    assert checked >= 5


def torch_load_calls(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
            yield node


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(REPO)) for p in SOURCES])
def test_every_torch_load_is_weights_only(path):
    for call in torch_load_calls(path):
        weights_only = [kw.value for kw in call.keywords if kw.arg == "weights_only"]
        assert weights_only and isinstance(weights_only[0], ast.Constant) and weights_only[0].value is True, \
            f"{path.relative_to(REPO)}:{call.lineno}: torch.load without weights_only=True"


def test_the_scan_sees_the_torch_loads():
    assert sum(1 for p in SOURCES for _ in torch_load_calls(p)) >= 5
