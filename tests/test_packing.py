"""--packing: first-fit-decreasing bins, and a packed step gives the loss and gradients of the
same examples unpacked (SFT, sft_verifier, DPO and BT, through the module's real training
step, accumulation included); a packed sequence's log-prob or reward does not depend on the sequences beside it."""
import pytest
import torch

import errors
import flag_checks
import flags
import train
from collate_functions import (PreferenceCollator, SFTCollator, concatenate_pairs, first_fit_decreasing, pack_or_pad,
                               pack_sft)
from conftest import EMBEDDED_MODEL


def test_first_fit_decreasing_hand_worked():
    """Lengths [5, 9, 3, 7, 2], capacity 10. Longest first: 9 opens bin A (room 1), 7 opens
    B (room 3), 5 opens C (room 5), 3 fits B (room 0), 2 fits C (room 3)."""
    assert first_fit_decreasing([5, 9, 3, 7, 2], 10) == [[1], [3, 2], [0, 4]]


def test_pack_sft_layout():
    """Lengths 5, 3, 2: rows are at most the longest example (5) long, so 3 and 2 share one."""
    examples = [{"input_ids": [1, 2, 3, 4, 5], "labels": [-100, 2, 3, 4, 5]},
                {"input_ids": [11, 12, 13], "labels": [11, -100, 13]}, {"input_ids": [21, 22], "labels": [21, 22]}]
    batch = pack_sft(examples, pad_id=0, capacity=6)
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 5], [11, 12, 13, 21, 22]]
    # Each conversation's first token is never a target (it is not one unpacked either).
    assert batch.labels.tolist() == [[-100, 2, 3, 4, 5], [-100, -100, 13, -100, 22]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 0, 1]]
    assert batch.sequence_index.tolist() == [[0, 0, 0, 0, 0], [1, 1, 1, 2, 2]]
    three_rows = pack_sft(examples, pad_id=0, capacity=4)       # 5 tokens fit nowhere: its own row
    assert three_rows.input_ids.tolist() == [[1, 2, 3, 4, 5], [11, 12, 13, 0, 0], [21, 22, 0, 0, 0]]
    assert three_rows.position_ids.tolist()[2] == [0, 1, 0, 1, 2]      # the padding its own run
    assert three_rows.attention_mask.tolist()[2] == [1, 1, 0, 0, 0]
    assert three_rows.sequence_index.tolist()[2] == [2, 2, -1, -1, -1]


def test_pack_or_pad_packs_only_where_it_saves_rows():
    """Lengths 5, 3, 2 pack into 2 rows: packed. Lengths 5, 3 would take 2 rows either way:
    padded (no position_ids), the layout without the block mask's cost."""
    examples = [{"input_ids": [1, 2, 3, 4, 5], "labels": [-100, 2, 3, 4, 5]},
                {"input_ids": [11, 12, 13], "labels": [11, -100, 13]}, {"input_ids": [21, 22], "labels": [21, 22]}]
    assert pack_or_pad(examples, 0, 512).input_ids.shape == (2, 5)
    assert pack_or_pad(examples, 0, 512).position_ids is not None
    two = pack_or_pad(examples[:2], 0, 512)
    assert two.position_ids is None and two.input_ids.tolist() == [[1, 2, 3, 4, 5], [11, 12, 13, 0, 0]]
    assert pack_or_pad(examples, 0, None).position_ids is None


def real_step(module, step) -> tuple[float, dict, dict]:
    """One optimizer step of the real training step (training_step -> _update) on the StepBatch
    `step`, under a lightning.Trainer on CPU with max_steps=1: the step's loss (train/loss before
    logging), its statistics summed as _update returns them, and the gradients the optimizer step
    found (unclipped where the run has --gradient-clip-val 0). The weights are put back after the
    update, so that steps on one module compare."""
    import copy

    import lightning as L

    class Gradients(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            self.grads = {n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None}
    gradients, returned, update = Gradients(), [], module._update
    module._update = lambda batch, batch_idx: returned.append(update(batch, batch_idx)) or returned[-1]
    weights = copy.deepcopy(module.state_dict())
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, precision=module.config.model.precision, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0, callbacks=[gradients])
    try:
        trainer.fit(module, torch.utils.data.DataLoader([step], batch_size=None, collate_fn=lambda s: s))
    finally:
        del module._update
        module.load_state_dict(weights)
    sums = returned[0][0]
    return module.metrics(sums)["loss"], sums, gradients.grads


def step_with(module, collator, rows):
    """One real step through the module: the StepBatch, the loss, the summed statistics and the
    gradients."""
    batch = collator(rows)
    return batch, *real_step(module, batch)


def assert_same_step(plain, packed):
    """Loss to 1e-5, statistics to 1e-4 relative, every gradient to 1e-5."""
    (_, plain_loss, plain_sums, plain_grads), (_, packed_loss, packed_sums, packed_grads) = plain, packed
    assert abs(packed_loss - plain_loss) < 1e-5
    assert packed_sums.keys() == plain_sums.keys()
    for k, v in plain_sums.items():
        assert abs(packed_sums[k] - v) < 1e-4 * max(1.0, abs(v)), k
    assert packed_grads.keys() == plain_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-5, atol=1e-5, msg=name)


def varied(rows: list[dict]) -> list[dict]:
    """12 rows that packing shrinks (it makes rows no longer than the micro-batch's longest
    sequence): each micro-batch of 6 holds one of the longest rows and five of the shortest,
    about half its length."""
    def length(r):
        return len(r["input_ids"]) if "input_ids" in r else max(len(r["chosen_input_ids"]), len(r["rejected_input_ids"]))
    rows = sorted(rows, key=length)
    return [rows[-1], *rows[:5], rows[-2], *rows[5:10]]


@pytest.mark.parametrize("training_type", ["sft", "sft_verifier"])
def test_packed_step_equals_unpacked_step(tokenizer, training_type):
    from module import PostTrainingModule
    config, _ = flags.parse_config(["--training-type", training_type, "--train-dataset-length", "60",
                                    "--batch-size", "6", "--accumulate-grad-batches", "2", "--max-length", "256",
                                    "--gradient-clip-val", "0"])
    config = flags.resolve(config)
    loaders, _, _, _ = train.build_data(config, tokenizer)
    rows = varied(list(loaders["train"].dataset))
    module = PostTrainingModule(config, tokenizer=tokenizer)
    step = lambda collator: step_with(module, collator, rows)    # noqa: E731
    plain, plain_loss, plain_sums, plain_grads = step(SFTCollator(tokenizer.pad_token_id, micro_batch_size=6))
    packed, packed_loss, packed_sums, packed_grads = step(
        SFTCollator(tokenizer.pad_token_id, micro_batch_size=6, pack_capacity=256))
    assert packed.micro_batches[0].position_ids is not None
    assert sum(mb.input_ids.numel() for mb in packed.micro_batches) < sum(mb.input_ids.numel() for mb in plain.micro_batches)
    assert packed.count == plain.count
    if training_type == "sft_verifier":
        assert all(c > 0 for c in packed.count)            # both tasks present
    assert abs(packed_loss - plain_loss) < 1e-5
    for k, v in plain_sums.items():
        assert abs(packed_sums[k] - v) < 1e-4 * max(1.0, abs(v)), k
    for name, grad in plain_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-5, atol=1e-5, msg=name)


def test_packing_flag_not_for_grpo():
    config, given = flags.parse_config(["--training-type", "grpo", "--no-packing"])
    with pytest.raises(errors.ConfigError, match="--packing only applies"):
        flag_checks.validate(config, given)


PAIRS = [{"chosen_input_ids": [11, 12, 13], "chosen_labels": [-100, 12, 13],
          "rejected_input_ids": [11, 14], "rejected_labels": [-100, 14]},
         {"chosen_input_ids": [21, 22, 23, 24, 25], "chosen_labels": [-100, -100, 23, 24, 25],
          "rejected_input_ids": [21, 26], "rejected_labels": [-100, 26]}]


def test_packed_pairs_layout():
    """Sequences 0, 1 chosen (3 and 5 tokens), 2, 3 rejected (2 and 2); rows of at most 5.
    First-fit decreasing: 1 (5) fills row A, 0 (3) opens B (room 2), 2 (2) fills B, 3 (2)
    opens C, padded to 5."""
    batch = concatenate_pairs(PAIRS, pad_id=0, pack_capacity=512)
    assert batch.input_ids.tolist() == [[21, 22, 23, 24, 25], [11, 12, 13, 11, 14], [21, 26, 0, 0, 0]]
    assert batch.sequence_index.tolist() == [[1, 1, 1, 1, 1], [0, 0, 0, 2, 2], [3, 3, -1, -1, -1]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]
    assert batch.count == 2 and batch.sequences == 4
    rows, columns = batch.packed_last_tokens()
    assert rows.tolist() == [1, 0, 1, 2] and columns.tolist() == [2, 4, 4, 1]
    # per_sequence adds entry [r, t] to sequence_index[r, t + 1], the sequence of the token it
    # predicts: all ones count each sequence's tokens, but the first of a row's first sequence.
    assert batch.per_sequence(torch.ones(3, 4)).tolist() == [2.0, 4.0, 2.0, 1.0]
    labelled = batch.per_sequence(batch.labels[:, 1:] != -100)
    assert labelled.tolist() == [2, 3, 1, 1]          # the completion tokens of each sequence


def preference_setup(tokenizer, training_type, extra=()):
    from models import load_causal_lm
    from module import PostTrainingModule
    config, _ = flags.parse_config(["--training-type", training_type, "--train-dataset-length", "60",
                                    "--batch-size", "6", "--accumulate-grad-batches", "2", "--max-length", "256",
                                    "--gradient-clip-val", "0", *extra])
    config = flags.resolve(config)
    loaders, _, _, _ = train.build_data(config, tokenizer)
    rows = varied(list(loaders["train"].dataset))
    reference = None
    if training_type == "dpo":
        # A live reference unlike the policy, so the loss is away from ln 2 and the margins matter.
        reference = load_causal_lm(str(EMBEDDED_MODEL))
        with torch.no_grad():
            for p in reference.parameters():
                p.mul_(0.9)
    module = PostTrainingModule(config, tokenizer=tokenizer, reference=reference)
    return module, rows


@pytest.mark.parametrize("training_type,extra", [("dpo", ("--rpo-alpha", "0.5", "--no-precompute-ref-log-probs")),
                                                 ("bt", ("--center-rewards-coefficient", "0.1"))])
def test_packed_preference_step_equals_unpacked_step(tokenizer, training_type, extra):
    """DPO (live reference, RPO term: per-sequence log-probs and completion-token counts) and BT
    (rewards read at each sequence's last token, centering term): a packed step's loss,
    statistics (rewards, margins, log-probs) and gradients equal the unpacked step's."""
    module, rows = preference_setup(tokenizer, training_type, extra)
    plain = step_with(module, PreferenceCollator(tokenizer.pad_token_id, micro_batch_size=6), rows)
    packed = step_with(module, PreferenceCollator(tokenizer.pad_token_id, micro_batch_size=6, pack_capacity=256), rows)
    assert packed[0].micro_batches[0].position_ids is not None
    assert len(packed[0].micro_batches[0].input_ids) < 12           # 12 sequences in fewer rows
    assert (sum(mb.input_ids.numel() for mb in packed[0].micro_batches)
            < sum(mb.input_ids.numel() for mb in plain[0].micro_batches))
    assert packed[0].count == plain[0].count == 12
    assert abs(plain[1]) > 0.1 and max(g.abs().max() for g in plain[3].values()) > 0
    assert_same_step(plain, packed)


@pytest.mark.parametrize("training_type", ["dpo", "bt"])
def test_packed_sequences_do_not_see_each_other(tokenizer, training_type):
    """Change the tokens of the first sequence of a packed row that holds more: that sequence's
    log-prob (DPO) or reward (BT) changes, every other sequence's stays the same."""
    from logprobs import preference_logps
    from reward_model import sequence_rewards
    module, rows = preference_setup(tokenizer, training_type)
    batch = concatenate_pairs(rows[:6], tokenizer.pad_token_id, pack_capacity=256)

    def per_sequence(b):
        with torch.no_grad():
            if training_type == "dpo":
                return preference_logps(module.model, b)
            return sequence_rewards(module.model, b.input_ids, None, b.position_ids, b.packed_last_tokens())

    row = next(r for r in range(len(batch.input_ids)) if len(set(batch.sequence_index[r].tolist()) - {-1}) > 1)
    target = int(batch.sequence_index[row, 0])
    changed = concatenate_pairs(rows[:6], tokenizer.pad_token_id, pack_capacity=256)
    inside = slice(1, int((batch.sequence_index[row] == target).sum()) - 1)   # all of `target` but its ends
    changed.input_ids[row, inside] = (changed.input_ids[row, inside] + 1) % 1000
    before, after = per_sequence(batch), per_sequence(changed)
    others = torch.arange(batch.sequences) != target
    assert abs(float(before[target] - after[target])) > 1e-3
    torch.testing.assert_close(after[others], before[others], rtol=0, atol=1e-6)
