"""--training-type orpo and kto: kto's data (unpaired rows, pairs unpaired, bad labels), the
mismatched sequences of its KL estimate, the module's wiring against the pure losses on log-probs
from full logits, the refusals, and short runs of both through train.py on the bundled model and data."""
import logging
import math

import pytest
import torch

import flags
import models
import train
from collate_functions import KTOCollator, PreferenceCollator
from conftest import EMBEDDED_MODEL, read_scalars, write_jsonl
from custom_dataset import CustomDataset
from data_files import DataError
from flags import EMBEDDED_DATA
from losses.dpo import sequence_logps_from_logits
from losses.kto import kto_loss
from losses.labels import IGNORE_INDEX
from losses.orpo import orpo_loss
from tokenization import tokenize_conversation, tokenize_kto_rows, tokenize_preference_rows

PREFS = str(EMBEDDED_DATA["dpo"])


def test_kto_unpairs_the_dpo_pairs_as_trl_does():
    """3 pairs -> 6 rows: the 3 chosen replies (label true), then the 3 rejected (false), with their prompts."""
    pairs = CustomDataset(PREFS, "train", "dpo", length=3).rows
    rows = CustomDataset(PREFS, "train", "kto", length=3).rows
    assert [r["label"] for r in rows] == [True] * 3 + [False] * 3
    assert [r["completion"] for r in rows] == [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    assert [r["prompt"] for r in rows] == [p["prompt"] for p in pairs] * 2
    assert [r["row"] for r in rows] == [0, 1, 2] * 2


def test_kto_reads_prompt_completion_label_rows(tmp_path):
    """Strings (a user turn and the reply), in source order, and TRL's conversational form."""
    from custom_dataset import adapt_kto
    path = write_jsonl(tmp_path / "kto.jsonl", [{"prompt": f"What is {i} + 2?", "completion": f"{i + 2}.",
                                                 "label": i % 2 == 0} for i in range(20)])
    rows = CustomDataset(str(path), "train", "kto").rows
    assert len(rows) == 18 and [r["label"] for r in rows] == [r["row"] % 2 == 0 for r in rows]
    assert rows[0] == {"prompt": [{"role": "user", "content": f"What is {rows[0]['row']} + 2?"}],
                       "completion": [{"role": "assistant", "content": f"{rows[0]['row'] + 2}."}],
                       "label": rows[0]["row"] % 2 == 0, "row": rows[0]["row"]}
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    completion = [{"role": "assistant", "content": "Go away."}]
    assert adapt_kto({"prompt": prompt, "completion": completion, "label": False}) == \
        {"prompt": prompt, "completion": completion, "label": False}
    with pytest.raises(ValueError, match="completion: expected one assistant message, got 2"):
        adapt_kto({"prompt": prompt, "completion": completion * 2, "label": True})


@pytest.mark.parametrize("label, got", [('"yes"', "got str 'yes'"), ("1", "got int 1"), (None, "got nothing")])
def test_a_bad_kto_label_is_refused_naming_file_row_and_field(tmp_path, label, got):
    good = '{"prompt": "a", "completion": "b", "label": true}'
    bad = '{"prompt": "c", "completion": "d"' + ("" if label is None else f', "label": {label}') + "}"
    path = tmp_path / "kto.jsonl"
    path.write_text(f"{good}\n{good}\n{bad}\n{good}\n")
    with pytest.raises(DataError) as e:
        CustomDataset(str(path), "train", "kto")
    message = str(e.value)
    assert f"Data set {path} (train), row 2, field label: expected true or false" in message, message
    assert got in message and len(message.splitlines()) == 1


def test_the_mismatched_sequences_are_each_prompt_with_the_previous_rows_completion(tokenizer):
    """The collator joins row i's prompt tokens with row i-1's completion tokens (row 0 with the last
    row's): the same ids and labels as tokenizing that conversation whole, for this template."""
    rows = CustomDataset(PREFS, "train", "kto", length=3).rows
    tokenized, _ = tokenize_kto_rows(rows, tokenizer, 1024)
    batch = KTOCollator(tokenizer.pad_token_id)(tokenized)
    for i, row in enumerate(rows):
        other = rows[i - 1]
        ids, labels = tokenize_conversation(tokenizer, row["prompt"] + other["completion"], 1024, last_turn_only=True)
        n = len(ids)
        assert batch.mismatched.input_ids[i, :n].tolist() == ids
        assert batch.mismatched.labels[i, :n].tolist() == labels
        assert batch.mismatched.attention_mask[i].sum() == n
    assert batch.desirable.tolist() == [True] * 3 + [False] * 3
    # cut to --max-length like every row
    short = KTOCollator(tokenizer.pad_token_id, max_length=40)(tokenized)
    assert short.mismatched.input_ids.shape[1] == 40


def perturbed_policy():
    policy = models.load_causal_lm(str(EMBEDDED_MODEL))
    with torch.no_grad():                      # move the policy away from the reference
        for p in policy.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return policy


def config_for(training_type: str, *extra: str):
    config, _ = flags.parse_config(["--training-type", training_type, "--train-dataset-length", "3", *extra])
    return flags.resolve(config)


def test_orpo_module_feeds_the_loss_mean_log_probs(tokenizer):
    """The module's loss (packed rows) equals losses/orpo.py on summed log-probs from full logits and
    the completion token counts, and its logged sums are the loss's."""
    from module import PostTrainingModule
    torch.manual_seed(0)
    config = config_for("orpo", "--orpo-lambda", "0.5")
    rows, _ = tokenize_preference_rows(CustomDataset(PREFS, "train", "orpo", length=6), tokenizer, 1024)
    packed = PreferenceCollator(tokenizer.pad_token_id, pack_capacity=1024)(rows)
    padded = PreferenceCollator(tokenizer.pad_token_id)(rows)
    policy = perturbed_policy()
    module = PostTrainingModule(config, model=policy)
    with torch.no_grad():
        loss, sums = module.compute(packed)
        logps = sequence_logps_from_logits(policy(input_ids=padded.input_ids,
                                                  attention_mask=padded.attention_mask).logits, padded.labels)
    tokens = (padded.labels[:, 1:] != IGNORE_INDEX).sum(dim=-1)
    expected = orpo_loss(logps[:6], logps[6:], tokens[:6], tokens[6:], 0.5)
    assert packed.input_ids.shape[0] < padded.input_ids.shape[0]
    assert abs(loss.item() - expected.losses.mean().item()) < 1e-5
    assert abs(float(sums["nll_loss"]) - expected.nll.sum().item()) < 1e-4
    assert abs(float(sums["rewards/margins"]) - (expected.chosen_rewards - expected.rejected_rewards).sum().item()) < 1e-5
    assert module._reference == [] and "kl" not in sums


@pytest.mark.parametrize("pack", [False, True])
def test_kto_module_matches_the_loss_on_full_logits(tokenizer, pack):
    """The module's kto loss equals losses/kto.py on log-probs from full logits: each row's own
    completion under policy and reference, z0 from each prompt with the previous row's completion."""
    from module import PostTrainingModule
    torch.manual_seed(0)
    config = config_for("kto", "--beta", "0.5", "--kto-undesirable-weight", "1.5")
    rows = CustomDataset(PREFS, "train", "kto", length=6).rows
    tokenized, _ = tokenize_kto_rows(rows, tokenizer, 1024)
    batch = KTOCollator(tokenizer.pad_token_id, pack_capacity=1024 if pack else None)(tokenized)
    policy, reference = perturbed_policy(), models.load_causal_lm(str(EMBEDDED_MODEL))
    module = PostTrainingModule(config, model=policy, reference=reference)
    with torch.no_grad():
        loss, sums = module.compute(batch)

        def logps(model, conversations):
            ids = [tokenize_conversation(tokenizer, c, 1024, last_turn_only=True) for c in conversations]
            out = []
            for i, labels in ids:
                t = torch.tensor([i])
                out.append(sequence_logps_from_logits(model(input_ids=t).logits, torch.tensor([labels]))[0])
            return torch.stack(out)
        own = [r["prompt"] + r["completion"] for r in rows]
        swapped = [r["prompt"] + rows[i - 1]["completion"] for i, r in enumerate(rows)]
        kl = (logps(policy, swapped) - logps(reference, swapped)).mean()
        desirable = torch.tensor([r["label"] for r in rows])
        expected = kto_loss(logps(policy, own), logps(reference, own), desirable, kl, 0.5, 1.0, 1.5)
    assert (batch.completions.input_ids.shape[0] < 12) == pack and (batch.mismatched.input_ids.shape[0] < 12) == pack
    assert abs(loss.item() - expected.losses.mean().item()) < 1e-5
    assert abs(float(sums["kl"]) - expected.kl.item()) < 1e-4 and expected.kl.item() > 0
    assert abs(float(sums["rewards/chosen"]) - expected.rewards[desirable].sum().item()) < 1e-5
    assert int(sums["_rows/rewards/rejected"]) == 6
    # A step without desirable rows reports no mean over them, rather than 0.
    means = module.metrics({"count": 4.0, "loss": 2.0, "rewards/chosen": 0.0, "_rows/rewards/chosen": 0.0,
                            "rewards/rejected": 1.0, "_rows/rewards/rejected": 4.0})
    assert means == {"loss": 0.5, "rewards/rejected": 0.25}


@pytest.mark.parametrize("argv, sentence", [
    (["--training-type", "dpo", "--orpo-lambda", "0.2"], "--orpo-lambda only applies to --training-type orpo."),
    (["--training-type", "orpo", "--kto-desirable-weight", "1.2"],
     "--kto-desirable-weight only applies to --training-type kto."),
    (["--training-type", "orpo", "--kto-undesirable-weight", "1.2"],
     "--kto-undesirable-weight only applies to --training-type kto."),
    (["--training-type", "orpo", "--beta", "0.2"], "--beta only applies to --training-type dpo and kto."),
    (["--training-type", "kto", "--dpo-loss", "ipo"], "--dpo-loss only applies to --training-type dpo."),
    (["--training-type", "kto", "--precompute-ref-log-probs"],
     "--precompute-ref-log-probs only applies to --training-type dpo."),
    (["--training-type", "orpo", "--orpo-lambda", "-1"], "--orpo-lambda must not be negative"),
    (["--training-type", "kto", "--kto-undesirable-weight", "0"], "--kto-desirable-weight and "
                                                                  "--kto-undesirable-weight must be positive"),
    (["--training-type", "kto", "--beta", "0"], "--beta must be positive (got 0.0)."),
])
def test_flags_that_do_not_apply_are_refused_in_one_sentence(argv, sentence, capsys):
    assert train.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and sentence in err[0], err


def run(tmp_path, monkeypatch, caplog, *argv):
    """Two steps of 4 rows (log every step, one validation) through train.py; the tensorboard
    scalars and how many causal LMs were loaded."""
    caplog.set_level(logging.INFO, logger="train")
    loaded = []
    load = models.load_causal_lm
    monkeypatch.setattr(models, "load_causal_lm", lambda *a, **k: loaded.append(a[0]) or load(*a, **k))
    assert train.main([*argv, "--storage-path", str(tmp_path), "--name", "run", "--train-dataset-length", "8",
                       "--test-dataset-length", "4", "--batch-size", "4", "--max-steps", "2", "--lr", "1e-3",
                       "--val-generations", "0", "--num-sanity-val-steps", "0", "--log-every-n-steps", "1",
                       "--val-check-interval", "2"]) == 0
    return read_scalars(tmp_path / "run" / "tensorboard"), loaded


def test_orpo_trains_two_steps_without_a_reference(tmp_path, monkeypatch, caplog):
    scalars, loaded = run(tmp_path, monkeypatch, caplog, "--training-type", "orpo")
    losses = [v for _, v in scalars["train/loss"]]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert len(loaded) == 1                                    # the policy; no reference model
    assert "--training-type orpo is reference-free: no reference model is loaded" in caplog.text
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "nll_loss",
                 "log_odds_ratio"):
        assert math.isfinite(scalars[f"train/{name}"][-1][1]) and math.isfinite(scalars[f"val/{name}"][-1][1])
    # the loss is the NLL plus lambda (0.1) times the odds-ratio term -log sigma = -log_odds_ratio
    val = {k: v[-1][1] for k, v in scalars.items()}
    assert abs(val["val/loss"] - (val["val/nll_loss"] - 0.1 * val["val/log_odds_ratio"])) < 1e-5
    assert "train/kl" not in scalars and not (tmp_path / "run" / "reference_logps").exists()
    assert scalars["data/train_rows"][0][1] == 8


def test_kto_trains_two_steps_on_the_dpo_pairs_unpaired(tmp_path, monkeypatch, caplog):
    """8 pairs -> 16 rows; at step 0 the policy is the reference, so every log-ratio and z0 is 0 and
    every row's loss 1 - sigma(0) = 0.5."""
    scalars, loaded = run(tmp_path, monkeypatch, caplog, "--training-type", "kto")
    losses = [v for _, v in scalars["train/loss"]]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert abs(losses[0] - 0.5) < 1e-6 and scalars["train/kl"][0][1] == 0.0
    assert len(loaded) == 2                                    # the policy and its frozen reference
    assert scalars["data/train_rows"][0][1] == 16 and scalars["train/completions"][0][1] == 4
    for name in ("loss", "kl", "rewards/chosen", "rewards/rejected"):
        assert math.isfinite(scalars[f"val/{name}"][-1][1]), name
    assert scalars["val/kl"][-1][1] > 0                        # the trained policy has moved


def test_kto_under_lora_takes_the_reference_from_the_disabled_adapters(tmp_path, monkeypatch, caplog):
    scalars, loaded = run(tmp_path, monkeypatch, caplog, "--training-type", "kto", "--lora-r", "4")
    assert len(loaded) == 1
    assert "the policy with its LoRA adapters disabled" in caplog.text
    assert abs(scalars["train/loss"][0][1] - 0.5) < 1e-6       # fresh adapters: the policy is the reference
    assert math.isfinite(scalars["val/kl"][-1][1])
