"""--compile: a compiled training step (the real one) gives the eager step's loss and gradients (SFT, DPO and
BT, packed; micro-batches of different lengths reuse one graph), a compiled run's checkpoint
and export are laid out as an uncompiled run's, and the flag is refused where it cannot apply.
Compiling on CPU takes tens of seconds a graph, so the steps are few and small."""
import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

import errors
import flag_checks
import flags
import train
from collate_functions import PreferenceCollator, SFTCollator
from conftest import EMBEDDED_MODEL
from test_packing import real_step


def one_step(module, step):
    """One real training step (test_packing.real_step: training_step under a lightning.Trainer):
    the step's loss and the gradients of every micro-batch's backward."""
    loss, _, grads = real_step(module, step)
    return loss, grads


@pytest.mark.parametrize("training_type", ["sft", "dpo", "bt"])
def test_compiled_step_equals_eager_step(tokenizer, training_type):
    from module import PostTrainingModule
    argv = ["--training-type", training_type, "--train-dataset-length", "60", "--batch-size", "3",
            "--accumulate-grad-batches", "2", "--max-length", "256", "--gradient-clip-val", "0"]
    config = flags.resolve(flags.parse_config(argv)[0])
    loaders, _, _, _ = train.build_data(config, tokenizer)
    rows = list(loaders["train"].dataset)
    key = (lambda r: len(r["input_ids"])) if training_type == "sft" else \
        (lambda r: max(len(r["chosen_input_ids"]), len(r["rejected_input_ids"])))
    rows = sorted(rows, key=key)
    # Two micro-batches of 3 of different lengths, each packing into fewer rows than it has sequences.
    rows = [rows[-1], *rows[:2], rows[-2], *rows[2:4]]
    collator = SFTCollator(tokenizer.pad_token_id, 3, pack_capacity=256) if training_type == "sft" else \
        PreferenceCollator(tokenizer.pad_token_id, 3, pack_capacity=256)
    step = collator(rows)
    assert all(mb.position_ids is not None for mb in step.micro_batches)
    assert len({mb.input_ids.shape for mb in step.micro_batches}) == 2
    if training_type == "dpo":
        for mb in step.micro_batches:
            mb.ref_logps = torch.zeros(2 * mb.count)

    def run(compile_):
        torch.manual_seed(0)        # bt: the same new score head
        module = PostTrainingModule(config.replace(compile=compile_), tokenizer=tokenizer)
        module.train()
        return module, one_step(module, step)

    eager_module, (eager_loss, eager_grads) = run(False)
    torch._dynamo.reset()
    counters.clear()
    module, (loss, grads) = run(True)
    # One graph for both lengths (dynamic shapes), compiled once: no recompile.
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert abs(loss - eager_loss) < 1e-5
    assert grads.keys() == eager_grads.keys()
    for name, grad in eager_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-5, msg=name)
    # The compiled forward lives beside the model: no `_orig_mod.` keys, no extra submodules.
    assert module.state_dict().keys() == eager_module.state_dict().keys()
    assert [n for n, _ in module.named_modules()] == [n for n, _ in eager_module.named_modules()]
    # Without gradients (validation, reference log-probs) the model runs eagerly: nothing new compiled.
    with torch.no_grad():
        module.compute(step.micro_batches[0], step.count)
    assert counters["stats"]["unique_graphs"] == 1


def test_compiled_run_checkpoint_and_export_match_uncompiled(tmp_path, tokenizer):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    import models
    torch._dynamo.reset()
    counters.clear()
    code = train.main(["--storage-path", str(tmp_path), "--name", "c", "--compile", "--train-dataset-length", "12",
                       "--batch-size", "4", "--max-steps", "2", "--test-dataset-length", "4",
                       "--num-sanity-val-steps", "0", "--val-generations", "1", "--val-max-new-tokens", "4",
                       "--lr", "1e-3"])
    assert code == 0
    # The training forward was compiled: one graph, or two where a micro-batch stayed padded.
    assert 1 <= counters["stats"]["unique_graphs"] <= 2, dict(counters["stats"])
    run = tmp_path / "c"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2 and ckpt["hyper_parameters"]["compile"] is True
    start = load_file(str(EMBEDDED_MODEL / "model.safetensors"))
    # The keys of an uncompiled run: the model's own, under the LightningModule's `model.`.
    assert sorted(k.removeprefix("model.") for k in ckpt["state_dict"]) == sorted(
        AutoModelForCausalLM.from_pretrained(str(EMBEDDED_MODEL)).state_dict())
    assert not any("_orig_mod" in k for k in ckpt["state_dict"])
    trained = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
    assert any(not torch.equal(v, trained[k]) for k, v in start.items())     # it trained
    exported = AutoModelForCausalLM.from_pretrained(models.pretrained_path(str(run)))
    for name, value in exported.state_dict().items():
        assert torch.equal(value, trained[name]), name
    # An uncompiled run resumes it (and the saved --compile is simply turned off).
    code = train.main(["--resume-from-checkpoint", str(run), "--no-compile", "--max-steps", "3"])
    assert code == 0
    assert torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 3


@pytest.mark.parametrize("argv, match", [
    (["--compile", "--use-ray", "--strategy", "fsdp", "--use-gpu"], "--compile does not work with --strategy fsdp"),
    (["--compile", "--mode", "test", "--model-name", str(EMBEDDED_MODEL)], "--compile only applies to --mode train"),
])
def test_compile_refused(argv, match):
    config, given = flags.parse_config(argv)
    with pytest.raises(errors.ConfigError, match=match):
        flag_checks.validate(config, given)


def test_compile_refused_without_torch_compile(monkeypatch):
    import compilation
    monkeypatch.delattr(torch, "compile")
    assert compilation.check_available(False).startswith("--compile needs torch.compile")
    config, given = flags.parse_config(["--compile"])
    with pytest.raises(errors.ConfigError, match="--compile needs torch.compile"):
        flag_checks.validate(config, given)
