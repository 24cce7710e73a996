"""--lora-r (adapters.py, through peft): the adapted model starts as the base model; each training
type trains only the adapters (and bt's score head), the base unchanged; DPO's reference is the
policy with its adapters disabled and equals a frozen copy's; checkpoints hold only what trains
and resume exactly; exports (merged, or the adapter folder alone) reload with the trained
model's logits; DoRA trains and merges; flags that cannot be honoured are refused.

Runs: the bundled tiny Qwen2 model, 2 steps at --lr 1e-3 (so the adapters move measurably)."""
import pytest
import torch

import adapters
import flags
import models
import rewards
import test_resume
import train
import upload_to_hub
from conftest import EMBEDDED_MODEL
from module import PostTrainingModule

COMMON = ["--lora-r", "4", "--max-steps", "2", "--test-dataset-length", "4", "--val-generations", "0",
          "--num-sanity-val-steps", "0", "--lr", "1e-3", "--max-length", "128"]


def lora_argv(kind: str, storage, name: str, *extra) -> list[str]:
    """test_resume.py's rows and batch sizes for each training type, 2 steps with adapters of rank 4."""
    return ["--training-type", kind, "--storage-path", str(storage), "--name", name, *test_resume.TYPES[kind],
            *COMMON, *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """trained(kind, *extra) -> (run folder, the module as it ended training): each run made once."""
    storage = tmp_path_factory.mktemp("lora")
    done = {}

    def run(kind: str, *extra):
        key = (kind, *extra)
        if key not in done:
            ended = []
            with pytest.MonkeyPatch.context() as mp:
                mp.setitem(rewards.REWARD_FUNCTIONS, "distinct", distinct)
                mp.setattr(PostTrainingModule, "on_train_end", lambda self: ended.append(self), raising=False)
                name = f"{kind}{len(done)}"
                assert train.main(lora_argv(kind, storage, name, *extra)) == 0
            done[key] = storage / name, ended[0]
        return done[key]
    return run


def distinct(prompt, completion: str, reference, num_tokens: int, max_new_tokens: int) -> float:
    """grpo's test reward (as in test_resume.py): the fraction of distinct characters, so completions differ."""
    return len(set(completion)) / max(1, len(completion))


def lora_settings(*extra):
    return flags.resolve(flags.parse_config(["--lora-r", "4", *extra])[0]).lora


def base_name(name: str) -> str:
    """The base model's name of a weight of the adapted model: the frozen original of a wrapped layer."""
    return name.replace(".base_layer.", ".").replace(".original_module.", ".")


@pytest.mark.parametrize("kind", ["sft", "bt"])
def test_at_step_0_the_adapted_model_computes_what_the_base_model_does(kind, tokenizer):
    torch.manual_seed(0)
    model = models.load_model(kind, str(EMBEDDED_MODEL), tokenizer).eval()
    ids = torch.tensor([[5, 17, 99, 3, 250, 8]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
        adapters.add_adapters(model, lora_settings(), kind)
        after = model(input_ids=ids).logits
    torch.testing.assert_close(after, before, rtol=0, atol=0)     # LoRA B starts at zero
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(torch.count_nonzero(p) == 0 for p in lora_b)
    assert {n.split(".")[-4] for n, p in model.named_parameters() if "lora_A" in n} == set(adapters.DECODER_TARGETS)


def test_an_encoder_reward_model_gets_adapters_on_every_linear_layer_and_a_trained_classifier():
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        num_labels=1)).eval()
    ids = torch.randint(0, 50, (2, 6))
    with torch.no_grad():
        before = model(input_ids=ids).logits
        adapters.add_adapters(model, lora_settings(), "bt")
        torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=0, atol=0)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert {n.split(".")[-4] for n in trainable if "lora_A" in n} == {"query", "key", "value", "dense"}
    # 2 layers x (query, key, value, attention output, intermediate, output) + the pooler's dense.
    assert sum("lora_A" in n for n in trainable) == 13
    assert {n for n in trainable if "lora_" not in n} == {"classifier.modules_to_save.default.weight",
                                                          "classifier.modules_to_save.default.bias"}


@pytest.mark.parametrize("kind", list(test_resume.TYPES))
def test_a_run_trains_only_the_adapters_and_its_checkpoint_holds_only_them(kind, trained, tokenizer):
    run, module = trained(kind)
    model = module.model
    base = models.load_model(kind, str(EMBEDDED_MODEL), tokenizer).state_dict()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    head = {n for n in trainable if "modules_to_save" in n}
    assert trainable and all("lora_" in n for n in trainable - head)
    assert bool(head) == (kind == "bt")
    assert module._reference == []      # dpo's and grpo's reference: the adapters disabled, no copy
    frozen = {n: v for n, v in model.state_dict().items() if n not in trainable}
    assert {base_name(n) for n in frozen} == set(base)
    for name, value in frozen.items():
        if not name.startswith("score."):       # bt's new head is drawn at random: its trained copy is checked below
            assert torch.equal(value, base[base_name(name)]), name        # the base did not move
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert all(torch.count_nonzero(p) > 0 for p in lora_b)              # every adapter did
    if kind == "bt":
        assert not torch.equal(model.score.modules_to_save["default"].weight, model.score.original_module.weight)
    ckpt = test_resume.last(run)
    assert set(ckpt["state_dict"]) == {f"model.{n}" for n in trainable}
    assert len(ckpt["optimizer_states"][0]["state"]) == len(trainable)
    assert sum(len(g["params"]) for g in ckpt["optimizer_states"][0]["param_groups"]) == len(trainable)


def test_dpo_reference_with_adapters_disabled_equals_a_frozen_copy(trained, tokenizer):
    run, module = trained("dpo", "--no-precompute-ref-log-probs")
    c = flags.resolve(flags.parse_config(["--training-type", "dpo", "--test-dataset-length", "4",
                                          "--max-length", "128", "--batch-size", "4"])[0])
    loaders, _, _, _ = train.build_data(c, tokenizer)
    batch = next(iter(loaders["test"]))
    assert batch.ref_logps is None and module._reference == []         # no copy was loaded
    frozen = models.load_causal_lm(str(EMBEDDED_MODEL)).eval()
    with torch.no_grad():
        policy = module.model.eval()
        from logprobs import preference_logps
        trained_logps = preference_logps(policy, batch)
        expected = preference_logps(frozen, batch)
    reference = module.reference_logps(batch)
    torch.testing.assert_close(reference, expected, rtol=0, atol=1e-5)
    assert (trained_logps - expected).abs().max() > 1e-3                 # the adapters are not zero
    # The adapters are back on afterwards.
    with torch.no_grad():
        torch.testing.assert_close(preference_logps(policy, batch), trained_logps, rtol=0, atol=0)


@pytest.mark.parametrize("kind,extra", [("sft", ()), ("bt", ()), ("sft", ("--use-dora",))],
                         ids=["sft", "bt", "sft-dora"])
def test_exports_reload_with_the_trained_models_logits(kind, extra, trained, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    run, module = trained(kind, *extra)
    auto = AutoModelForSequenceClassification if kind == "bt" else AutoModelForCausalLM
    load_base = {"num_labels": 1} if kind == "bt" else {}
    if "--use-dora" in extra:
        assert any("lora_magnitude_vector" in k for k in test_resume.last(run)["state_dict"])
    ids = torch.tensor([[5, 17, 99, 3, 250, 8, 41]])
    with torch.no_grad():
        expected = module.model.eval()(input_ids=ids).logits
        base_logits = auto.from_pretrained(str(EMBEDDED_MODEL), **load_base)(input_ids=ids).logits
    assert (expected - base_logits).abs().max() > 1e-4

    assert upload_to_hub.main(["--checkpoint-path", str(run), "--output-dir", str(tmp_path / "merged")]) == 0
    merged = auto.from_pretrained(str(tmp_path / "merged")).eval()
    assert not any("lora" in n for n in merged.state_dict())
    assert upload_to_hub.main(["--checkpoint-path", str(run), "--output-dir", str(tmp_path / "adapter"),
                               "--adapter-only"]) == 0
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= {
        p.name for p in (tmp_path / "adapter").iterdir()}
    assert not (tmp_path / "adapter" / "model.safetensors").exists()
    assert str(EMBEDDED_MODEL.parent.parent).encode() not in (tmp_path / "adapter" / "adapter_config.json").read_bytes()
    peft_model = PeftModel.from_pretrained(auto.from_pretrained(str(EMBEDDED_MODEL), **load_base),
                                           str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(peft_model(input_ids=ids).logits, expected, rtol=0, atol=1e-5)


def test_adapter_only_export_of_a_run_without_adapters_is_refused(tmp_path, capsys):
    assert train.main(["--storage-path", str(tmp_path), "--name", "full", "--max-steps", "1",
                       "--train-dataset-length", "8", *test_resume.TINY[:-2]]) == 0
    capsys.readouterr()
    assert upload_to_hub.main(["--checkpoint-path", str(tmp_path / "full"), "--output-dir", str(tmp_path / "out"),
                               "--adapter-only"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --adapter-only applies to checkpoints of --lora-r runs; "
                   f"{tmp_path / 'full' / 'checkpoints' / 'last.ckpt'} was trained without adapters."]
    assert not (tmp_path / "out").exists()


def test_resumed_lora_run_ends_at_the_weights_of_the_uninterrupted_run(tmp_path, monkeypatch):
    """test_resume.py's exact-resume check with --lora-r on dpo (reference log-probs precomputed
    with the adapters disabled, again on resume): stopped at step 7, resumed from step 6."""
    def argv_(name):
        return [*test_resume.argv("dpo", tmp_path, name), "--lora-r", "4"]
    assert train.main(argv_("straight")) == 0
    straight = test_resume.last(tmp_path / "straight")
    assert straight["global_step"] == 8 and all("lora_" in k for k in straight["state_dict"])

    def exit_(code):
        raise test_resume.Killed(code)
    monkeypatch.setattr(test_resume.os, "_exit", exit_)
    monkeypatch.setenv(train.FAULT_ENV, f"7:0:exit:{tmp_path / 'killed-once'}")
    with pytest.raises(test_resume.Killed):
        train.main(argv_("stopped"))
    saved = test_resume.last(tmp_path / "stopped")
    assert saved["global_step"] == 6
    assert any(not torch.equal(v, straight["state_dict"][k]) for k, v in saved["state_dict"].items())
    monkeypatch.delenv(train.FAULT_ENV)
    assert train.main(["--resume-from-checkpoint", str(tmp_path / "stopped")]) == 0
    resumed = test_resume.last(tmp_path / "stopped")
    test_resume.assert_same_weights(straight, resumed)
    assert resumed["optimizer_states"][0]["state"][0]["step"] == straight["optimizer_states"][0]["state"][0]["step"]


def test_resuming_with_other_adapter_settings_is_refused(trained, capsys):
    run, _ = trained("sft")
    capsys.readouterr()
    assert train.main(["--resume-from-checkpoint", str(run), "--max-steps", "3", "--lora-r", "8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    ckpt = run / "checkpoints" / "last.ckpt"
    assert err == [f"error: Checkpoint {ckpt} was trained with --lora-r 4, and its weights are those adapters'; "
                   f"resume it without changing --lora-r, --lora-target-modules or --use-dora."]
    assert test_resume.last(run)["global_step"] == 2


@pytest.mark.parametrize("argv,sentence", [
    (["--lora-alpha", "8"], "--lora-alpha only applies with --lora-r above 0 (LoRA adapters)."),
    (["--use-dora"], "--use-dora only applies with --lora-r above 0 (LoRA adapters)."),
    (["--lora-target-modules", "q_proj"], "--lora-target-modules only applies with --lora-r above 0 (LoRA adapters)."),
    (["--lora-r", "-1"], "--lora-r must not be negative (got -1; 0 turns adapters off)."),
    (["--lora-r", "4", "--lora-dropout", "1.5"], "--lora-alpha must be positive and --lora-dropout in [0, 1) "
                                                 "(got 16.0 and 1.5)."),
    (["--lora-r", "4", "--training-type", "dpo", "--lora-dropout", "0.1"],
     "--lora-dropout would be zeroed by --disable-dropout (on by default for dpo, bt, orpo and kto); give "
     "--no-disable-dropout too, or drop --lora-dropout."),
    (["--lora-r", "4", "--load-in-4bit"], "--load-in-4bit (QLoRA) needs bitsandbytes on a CUDA GPU (pip install "
                                          "bitsandbytes, and --use-gpu); this machine has no CUDA GPU."),
    (["--lora-r", "4", "--use-ray", "--use-gpu", "--strategy", "fsdp"],
     "--lora-r does not work with --strategy fsdp yet (FSDP over a frozen base with trained adapters is untested "
     "here, and needs GPUs to test); use --strategy ddp."),
    (["--load-in-4bit"], "--load-in-4bit (QLoRA) needs bitsandbytes on a CUDA GPU (pip install bitsandbytes, and "
                         "--use-gpu); this machine has no CUDA GPU."),
])
def test_flags_that_cannot_be_honoured_are_refused_in_one_sentence(argv, sentence, capsys):
    assert not torch.cuda.is_available()
    assert train.main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {sentence}"]


def test_a_target_module_the_model_lacks_is_one_sentence(tokenizer):
    model = models.load_model("sft", str(EMBEDDED_MODEL), tokenizer)
    with pytest.raises(adapters.ConfigError, match=r"^--lora-target-modules query,nope: .*\.$") as e:
        adapters.add_adapters(model, lora_settings("--lora-target-modules", "query,nope"), "sft")
    assert "\n" not in str(e.value)
