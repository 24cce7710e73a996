"""DPO end to end: preference collation (only the last reply counts), cached vs live
reference, log 2 at step 0, and learning on the bundled preference task."""
import math

import pytest
import torch

import flags
import train
from collate_functions import PreferenceCollator
from losses.labels import IGNORE_INDEX
from tokenization import tokenize_preference_rows
from conftest import EMBEDDED_MODEL, read_scalars
from reference_logps import precompute_reference_logps

PROMPT = [{"role": "user", "content": "Add 1 and 2."}, {"role": "assistant", "content": "The answer is 3."},
          {"role": "user", "content": "Now add 4."}]


def pair(chosen, rejected, row=0):
    return {"prompt": PROMPT, "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}], "row": row}


def test_only_the_final_reply_is_labelled_and_bad_pairs_are_dropped(tokenizer):
    rows, dropped = tokenize_preference_rows(
        [pair("The answer is 7.", "The answer is 8.", 0), pair("Same.", "Same.", 1),
         pair("The answer is 7.", "The answer is 9.", 2)], tokenizer, max_length=1024)
    assert dropped == {"identical": 1, "truncated": 0} and [r["row"] for r in rows] == [0, 2]
    labelled = [t for t, label in zip(rows[0]["chosen_input_ids"], rows[0]["chosen_labels"]) if label != IGNORE_INDEX]
    # "The answer is 7.<|im_end|>": the earlier assistant turn of the prompt is not labelled.
    assert tokenizer.decode(labelled) == "The answer is 7.<|im_end|>"
    _, dropped = tokenize_preference_rows([pair("The answer is 7.", "The answer is 8.")], tokenizer, max_length=20)
    assert dropped == {"identical": 0, "truncated": 1}
    batch = PreferenceCollator(tokenizer.pad_token_id)(rows)
    assert batch.input_ids.shape[0] == 4 and batch.count == 2
    assert batch.input_ids[0].tolist()[:len(rows[0]["chosen_input_ids"])] == rows[0]["chosen_input_ids"]
    assert batch.input_ids[2].tolist()[:len(rows[0]["rejected_input_ids"])] == rows[0]["rejected_input_ids"]


def test_cached_and_live_reference_give_the_same_loss(tokenizer):
    from models import load_causal_lm
    from module import PostTrainingModule
    config, _ = flags.parse_config(["--training-type", "dpo", "--train-dataset-length", "8", "--beta", "0.5"])
    config = flags.resolve(config)
    loaders, _, _, _ = train.build_data(config, tokenizer)
    policy = load_causal_lm(str(EMBEDDED_MODEL))
    with torch.no_grad():                      # move the policy away from the reference
        for p in policy.parameters():
            p.add_(0.01 * torch.randn_like(p))
    rows = list(loaders["train"].dataset)
    live = PostTrainingModule(config, model=policy, reference=load_causal_lm(str(EMBEDDED_MODEL)))
    live_loss, live_sums = live.compute(PreferenceCollator(tokenizer.pad_token_id)(rows))
    precompute_reference_logps(load_causal_lm(str(EMBEDDED_MODEL)), {"train": loaders["train"]}, 3,
                                    tokenizer.pad_token_id)
    cached = PostTrainingModule(config, model=policy)            # no reference model at all
    assert "ref_chosen_logps" in rows[0] and not cached._reference
    cached_loss, cached_sums = cached.compute(PreferenceCollator(tokenizer.pad_token_id)(rows))
    assert abs(live_loss.item() - cached_loss.item()) < 1e-5 and abs(live_loss.item() - math.log(2)) > 1e-3
    for key in live_sums:
        assert abs(float(live_sums[key]) - float(cached_sums[key])) < 1e-4, key


def test_rpo_adds_the_chosen_nll_per_token(tokenizer):
    """In the module: the RPO loss minus the plain loss equals alpha * mean over pairs of
    -log pi(y_w|x) / |y_w|, with |y_w| the chosen reply's labelled tokens."""
    from losses.dpo import sequence_logps_from_logits
    from models import load_causal_lm
    from module import PostTrainingModule
    plain, _ = flags.parse_config(["--training-type", "dpo", "--train-dataset-length", "6"])
    rpo, _ = flags.parse_config(["--training-type", "dpo", "--train-dataset-length", "6", "--rpo-alpha", "0.5"])
    plain, rpo = flags.resolve(plain), flags.resolve(rpo)
    loaders, _, _, _ = train.build_data(plain, tokenizer)
    batch = PreferenceCollator(tokenizer.pad_token_id)(list(loaders["train"].dataset))
    policy = load_causal_lm(str(EMBEDDED_MODEL))
    reference = load_causal_lm(str(EMBEDDED_MODEL))
    with torch.no_grad():
        plain_loss, _ = PostTrainingModule(plain, model=policy, reference=reference).compute(batch)
        rpo_loss, _ = PostTrainingModule(rpo, model=policy, reference=reference).compute(batch)
        B = batch.count
        logits = policy(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        logps = sequence_logps_from_logits(logits, batch.labels)[:B]
        tokens = (batch.labels[:B, 1:] != IGNORE_INDEX).sum(dim=-1)
    assert abs(plain_loss.item() - math.log(2)) < 1e-5          # policy == reference
    expected = 0.5 * (-logps / tokens).mean().item()
    assert abs((rpo_loss - plain_loss).item() - expected) < 1e-5 and expected > 0.1


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory):
    storage = tmp_path_factory.mktemp("runs")
    assert train.main(["--training-type", "dpo", "--storage-path", str(storage), "--name", "dpo",
                       "--train-dataset-length", "512", "--test-dataset-length", "64", "--batch-size", "8",
                       "--lr", "1e-4", "--beta", "1.0", "--val-generations", "0", "--log-every-n-steps", "8",
                       "--validate-before-training"]) == 0
    return read_scalars(storage / "dpo" / "tensorboard")


def test_dpo_starts_at_log_2_and_learns_to_prefer_correct_solutions(dpo_run):
    assert dpo_run["val/loss"][0] == (0, pytest.approx(math.log(2), abs=1e-6))     # policy == reference
    assert dpo_run["val/rewards/margins"][0][1] == 0.0
    # After one epoch on 512 pairs the held-out pairs (correct vs one-slip solutions) are
    # ranked right well above chance, with a positive mean margin.
    assert dpo_run["val/rewards/accuracies"][-1][1] > 0.6
    assert dpo_run["val/rewards/margins"][-1][1] > 0.1
    for name in ("train/rewards/chosen", "train/rewards/rejected", "train/logps/chosen", "train/logps/rejected",
                 "train/kl", "val/kl", "train/pairs"):
        assert name in dpo_run
