"""train.py end to end on the bundled model and data: checkpoints, TensorBoard scalars read
back from the event file, falling loss, changed weights, resume, --mode test, and
gradient-accumulation equivalence."""
import json

import pytest
import torch
from safetensors.torch import load_file

import flags
import train
from conftest import EMBEDDED_MODEL, read_scalars

FAST = ["--validate-before-training", "--val-generations", "2", "--val-max-new-tokens", "24", "--num-sanity-val-steps", "1",
        "--test-dataset-length", "32", "--lr", "1e-3", "--log-every-n-steps", "4"]


def scalars(run_dir):
    return read_scalars(run_dir / "tensorboard")


def state_dict(ckpt_path):
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    return ckpt, {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    storage = tmp_path_factory.mktemp("runs")
    code = train.main(["--storage-path", str(storage), "--name", "sft", "--train-dataset-length", "256",
                       "--batch-size", "8", "--max-epochs", "2", *FAST])
    assert code == 0
    return storage / "sft"


def test_checkpoints_config_and_events_exist(sft_run):
    names = sorted(p.name for p in (sft_run / "checkpoints").iterdir())
    assert names == ["epoch=0-step=32.ckpt", "epoch=1-step=64.ckpt", "last.ckpt"]
    config = (sft_run / "config.yaml").read_text()
    assert "training_type: sft" in config and "train_dataset_length: 256" in config
    ckpt, _ = state_dict(sft_run / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 64 and ckpt["hyper_parameters"]["lr"] == 1e-3


def test_loss_falls_and_metrics_are_logged(sft_run):
    s = scalars(sft_run)
    train_loss = [v for _, v in s["train/loss"]]
    assert len(train_loss) == 16                     # 64 steps, logged every 4
    assert sum(train_loss[-3:]) / 3 < 0.8 * sum(train_loss[:3]) / 3
    # The starting model is validated at step 0, then after each epoch.
    assert [step for step, _ in s["val/loss"]] == [0, 31, 63]
    val = [v for _, v in s["val/loss"]]
    assert val[2] < val[1] < val[0]
    for (_, loss), (_, ppl) in zip(s["val/loss"], s["val/perplexity"]):
        assert abs(ppl - torch.tensor(loss).exp().item()) < 1e-3 * ppl
    assert len(s["val/edit_distance"]) == 3 and all(v >= 0 for _, v in s["val/edit_distance"])
    assert s["data/train_rows"][0][1] == 256 and s["data/test_rows"][0][1] == 32
    assert s["lr"][-1][1] < s["lr"][0][1]            # linear decay


def test_parameters_changed(sft_run):
    _, trained = state_dict(sft_run / "checkpoints" / "last.ckpt")
    start = load_file(str(EMBEDDED_MODEL / "model.safetensors"))
    changed = [k for k, v in start.items() if not torch.equal(v, trained[k])]
    assert len(changed) == len(start)


def test_resume_continues_at_saved_step_then_mode_test(sft_run, capsys):
    # The run's saved config supplies every flag not given again (data caps, lr, ...).
    code = train.main(["--resume-from-checkpoint", str(sft_run), "--max-epochs", "3"])
    assert code == 0
    ckpt, _ = state_dict(sft_run / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 96 and ckpt["epoch"] == 2
    steps = [step for step, _ in scalars(sft_run)["train/loss"]]
    assert steps[-1] == 95 and all(b > a for a, b in zip(steps, steps[1:]) if a >= 64)
    assert (sft_run / "checkpoints" / "epoch=2-step=96.ckpt").exists()
    last_val = scalars(sft_run)["val/loss"][-1][1]
    capsys.readouterr()

    code = train.main(["--mode", "test", "--resume-from-checkpoint", str(sft_run / "checkpoints" / "last.ckpt")])
    assert code == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(metrics) == {"test/loss", "test/perplexity", "test/edit_distance", "test/reply_length"}
    # Same weights, same 32 held-out rows: the test loss is the last validation loss.
    assert abs(metrics["test/loss"] - last_val) < 1e-5


def test_roundoff_rounds_reported_metrics(sft_run, capsys):
    assert train.main(["--mode", "test", "--resume-from-checkpoint", str(sft_run), "--roundoff", "2"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["test/loss"] == round(metrics["test/loss"], 2) and metrics["test/loss"] > 0


def test_refuses_to_overwrite_a_run(sft_run, capsys):
    code = train.main(["--storage-path", str(sft_run.parent), "--name", "sft"])
    assert code == 2 and "already holds checkpoints" in capsys.readouterr().err


@pytest.mark.parametrize("pack", [None, 1024], ids=["padded", "packed"])
def test_accumulation_gives_the_gradient_of_the_larger_batch(tokenizer, pack):
    """Micro-batch 4 x accumulation 2 gives the gradient of batch 8 on the same rows (to 1e-6):
    each micro-batch's loss is divided by the supervised tokens of the whole step. Packed
    micro-batches (--packing) too, on rows chosen so that every micro-batch packs."""
    from collate_functions import SFTCollator
    from module import PostTrainingModule
    config, _ = flags.parse_config(["--train-dataset-length", "40", "--batch-size", "4",
                                    "--accumulate-grad-batches", "2"])
    config = flags.resolve(config)
    loaders, _, _, _ = train.build_data(config, tokenizer)
    rows = sorted(loaders["train"].dataset, key=lambda r: len(r["input_ids"]))
    rows = [rows[-1], *rows[:3], rows[-2], *rows[3:6]]       # a long one and three about half its length
    module = PostTrainingModule(config, tokenizer=tokenizer)

    def gradient(step):
        module.zero_grad(set_to_none=True)
        for mb in step.micro_batches:
            module.compute(mb, normalizer=step.count)[0].backward()
        return {n: p.grad.clone() for n, p in module.named_parameters()}

    accumulated = gradient(SFTCollator(tokenizer.pad_token_id, micro_batch_size=4, pack_capacity=pack)(rows))
    whole = gradient(SFTCollator(tokenizer.pad_token_id, micro_batch_size=8, pack_capacity=pack)(rows))
    assert len(SFTCollator(tokenizer.pad_token_id, micro_batch_size=4)(rows).micro_batches) == 2
    if pack:
        assert all(mb.position_ids is not None
                   for mb in SFTCollator(tokenizer.pad_token_id, micro_batch_size=4, pack_capacity=pack)(rows).micro_batches)
    for name, grad in whole.items():
        torch.testing.assert_close(accumulated[name], grad, rtol=0, atol=1e-6)
    assert max(g.abs().max().item() for g in whole.values()) > 1e-3


def test_accumulated_run_matches_larger_batch_run(tmp_path):
    """The same through train.py: 3 optimizer steps of 4 x 2 and of 8 end at the same weights.
    AdamW divides by sqrt(v), which magnifies float round-off on near-zero gradients: one
    element in 16,384 of a projection (value 0.15) ends 1.2e-5 apart, hence 1e-5 absolute plus
    1e-4 relative. The gradients themselves agree to 1e-6 (test_accumulation_gives_the_gradient_of_the_larger_batch).
    (With --packing, 8 rows pack into other bins than 2 x 4 and sums run in another order: one
    element in 49,152 ended 1.8e-5 apart; its gradients agree to 1e-6 all the same.)"""
    common = ["--storage-path", str(tmp_path), "--train-dataset-length", "24", "--max-epochs", "1",
              "--val-generations", "0", "--num-sanity-val-steps", "0", "--lr", "1e-3", "--test-dataset-length", "8"]
    assert train.main([*common, "--name", "acc", "--batch-size", "4", "--accumulate-grad-batches", "2"]) == 0
    assert train.main([*common, "--name", "big", "--batch-size", "8"]) == 0
    _, acc = state_dict(tmp_path / "acc" / "checkpoints" / "last.ckpt")
    _, big = state_dict(tmp_path / "big" / "checkpoints" / "last.ckpt")
    start = load_file(str(EMBEDDED_MODEL / "model.safetensors"))
    for name, value in start.items():               # lm_head is tied to the embedding
        assert not torch.equal(big[name], value)
        torch.testing.assert_close(acc[name], big[name], rtol=1e-4, atol=1e-5)


def test_sanity_train_validates_on_the_training_rows(tokenizer):
    config, _ = flags.parse_config(["--train-dataset-length", "16", "--sanity-train", "--batch-size", "4"])
    loaders, val_prompts, counts, _ = train.build_data(flags.resolve(config), tokenizer)
    assert loaders["train"].dataset == loaders["test"].dataset
    assert counts["data/train_rows"] == counts["data/test_rows"] == 16
    config, _ = flags.parse_config(["--train-dataset-length", "16", "--test-dataset-length", "5"])
    loaders, _, _, _ = train.build_data(flags.resolve(config), tokenizer)
    assert len(loaders["test"].dataset) == 5
    train_ids = {tuple(r["input_ids"]) for r in loaders["train"].dataset}
    assert not any(tuple(r["input_ids"]) in train_ids for r in loaders["test"].dataset)


def test_adamw_is_fused_and_takes_the_hand_worked_first_step():
    """module.adamw's first step, lr 0.1, weight decay 0.5: decoupled decay p * (1 - 0.1 * 0.5),
    then Adam's bias-corrected m / sqrt(v) = g / |g| on the first step, so each weight moves
    by -0.1 * sign(g) (0 where g = 0): [1, -2, 0.5] -> [0.95 - 0.1, -1.9 + 0.1, 0.475]."""
    from module import adamw
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    p.grad = torch.tensor([0.3, -0.01, 0.0])
    opt = adamw([p], lr=0.1, weight_decay=0.5)
    assert opt.defaults["fused"] is True
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([0.85, -1.8, 0.475]), rtol=0, atol=1e-6)
