"""Tokenized rows (tokenization.py) -> padded or packed, typed batches, the collators that
build an optimizer step's micro-batches, and the resumable sampler and loader that make a
checkpoint's data position exact.

    step = SFTCollator(pad_id, batch_size, pack_capacity=1024)(rows)     # a StepBatch
    loader = ResumableLoader(rows, ResumableSampler(rows, per_step, seed), collator)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from losses.labels import IGNORE_INDEX
from shared_flags import DEFAULT_TRUNCATION, MAX_LENGTH
from tokenization import truncate


@dataclass
class SFTBatch:
    """A right-padded batch for next-token training, one conversation a row, or packed.

    input_ids:      (B, T) long, padded with the tokenizer's pad id.
    attention_mask: (B, T) long, 1 on real tokens, 0 on padding.
    labels:         (B, T) long, the token id on supervised positions, -100 elsewhere.
                    labels[b, t] is the target of position t itself; the loss shifts.
    is_generate:    for sft_verifier rows (True: a generation row, D_correct; False: a
                    verification row, D_verify): (B,) bool, or (B, T) bool per token when
                    packed; else None.
    position_ids:   (B, T) long for packed rows (pack_sft): several conversations a row, the
                    positions restarting at 0 at each one (and at the padding), which is
                    how the model keeps attention within a conversation; None when unpacked.
    sequence_index: (B, T) long for packed rows: the index (in the examples given to
                    pack_sft) of the conversation each token belongs to, -1 on padding.
    """
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    is_generate: torch.Tensor | None = None
    position_ids: torch.Tensor | None = None
    sequence_index: torch.Tensor | None = None

    @property
    def generate_mask(self) -> torch.Tensor:
        """(B, T-1) bool: the next-token positions that belong to generation rows."""
        if self.is_generate is None:
            return torch.zeros_like(self.labels[:, 1:], dtype=torch.bool)
        if self.is_generate.dim() == 2:
            return self.is_generate[:, 1:]
        return self.is_generate[:, None].expand(-1, self.labels.shape[1] - 1)

    def per_sequence(self, values: torch.Tensor) -> torch.Tensor:
        """(B, T-1) per-next-token values -> one sum per conversation (kto's layouts), packed or not."""
        return sum_per_sequence(values, self.sequence_index)

    @property
    def num_tokens(self) -> int:
        """Supervised tokens that the loss counts (each label after the first position)."""
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())

    @property
    def count(self) -> int | tuple[int, int]:
        """What the loss is averaged over: supervised tokens; for sft_verifier rows the
        (verify, generate) token counts, one per term of the GenRM loss."""
        if self.is_generate is None:
            return self.num_tokens
        supervised = self.labels[:, 1:] != IGNORE_INDEX
        generate = int((supervised & self.generate_mask).sum())
        return int(supervised.sum()) - generate, generate


@dataclass
class StepBatch:
    """All micro-batches (SFTBatch or PreferenceBatch) of one optimizer step (--batch-size rows
    each, --accumulate-grad-batches of them). Keeping them together lets the loss be
    normalised over the whole step, so accumulation equals one big batch."""
    micro_batches: list

    @property
    def count(self) -> int | tuple[int, int]:
        """The loss's denominator for the whole step: supervised tokens (SFT), pairs (DPO,
        BT), or (verify, generate) tokens (sft_verifier), summed over the micro-batches."""
        counts = [mb.count for mb in self.micro_batches]
        if isinstance(counts[0], tuple):
            return tuple(sum(c) for c in zip(*counts))
        return sum(counts)


def pad_sft(examples: list[dict], pad_id: int, pad_to_multiple_of: int = 1) -> SFTBatch:
    """Right-pad tokenized examples into an SFTBatch."""
    longest = max(len(e["input_ids"]) for e in examples)
    T = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    B = len(examples)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((B, T), dtype=torch.long)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    for b, e in enumerate(examples):
        n = len(e["input_ids"])
        input_ids[b, :n] = torch.tensor(e["input_ids"])
        attention_mask[b, :n] = 1
        labels[b, :n] = torch.tensor(e["labels"])
    is_generate = torch.tensor([e["is_generate"] for e in examples]) if "is_generate" in examples[0] else None
    return SFTBatch(input_ids, attention_mask, labels, is_generate)


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices grouped into bins whose lengths sum to at most `capacity` (each length must
    fit alone): longest first, each into the first bin with room. Bins in order of opening."""
    bins, room = [], []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return bins


def pack_sft(examples: list[dict], pad_id: int, capacity: int, pad_to_multiple_of: int = 1) -> SFTBatch:
    """Padding-free layout of the same examples: conversations concatenated into rows of at
    most `capacity` tokens, and no longer than the longest example (first-fit decreasing),
    position_ids restarting at 0 at each conversation, rows right-padded to the longest row
    (the padding its own run of positions, with no label). The first token of a conversation
    is never a target, as unpacked."""
    lengths = [len(e["input_ids"]) for e in examples]
    # Rows no longer than the padded layout's: attention runs over a whole row under a
    # block-diagonal mask (SDPA, CPU), its cost quadratic in the row's length, so longer rows
    # would trade padding for attention work; these never hold more positions nor longer rows.
    bins = first_fit_decreasing(lengths, min(capacity, max(lengths)))
    rows = []
    for members in bins:
        ids, labels, positions, generate, index = [], [], [], [], []
        for i in members:
            e = examples[i]
            n = len(e["input_ids"])
            ids += e["input_ids"]
            labels += [IGNORE_INDEX] + list(e["labels"][1:])
            positions += range(n)
            generate += [e.get("is_generate", False)] * n
            index += [i] * n
        rows.append((ids, labels, positions, generate, index))
    longest = max(len(r[0]) for r in rows)
    T = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
    B = len(rows)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((B, T), dtype=torch.long)
    label_ids = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.arange(T).repeat(B, 1)
    is_generate = torch.zeros((B, T), dtype=torch.bool)
    sequence_index = torch.full((B, T), -1, dtype=torch.long)
    for b, (ids, labels, positions, generate, index) in enumerate(rows):
        n = len(ids)
        input_ids[b, :n] = torch.tensor(ids)
        attention_mask[b, :n] = 1
        label_ids[b, :n] = torch.tensor(labels)
        position_ids[b, :n] = torch.tensor(positions)
        position_ids[b, n:] = torch.arange(T - n)
        is_generate[b, :n] = torch.tensor(generate)
        sequence_index[b, :n] = torch.tensor(index)
    return SFTBatch(input_ids, attention_mask, label_ids,
                    is_generate if "is_generate" in examples[0] else None, position_ids, sequence_index)


def pack_or_pad(examples: list[dict], pad_id: int, capacity: int | None, pad_to_multiple_of: int = 1) -> SFTBatch:
    """pack_sft's layout where it saves rows, else pad_sft's (always, without a capacity).
    Either gives the same loss; with as many rows packing saves no position, and its
    block-diagonal mask costs a little more than the padding mask (5-10% of a CPU forward)."""
    if capacity:
        packed = pack_sft(examples, pad_id, capacity, pad_to_multiple_of)
        if packed.input_ids.shape[0] < len(examples):
            return packed
    return pad_sft(examples, pad_id, pad_to_multiple_of)


class SFTCollator:
    """DataLoader collate_fn: tokenized examples -> SFTBatch (validation) or StepBatch
    (training: micro-batches of `micro_batch_size` examples). With `pack_capacity` each
    micro-batch's examples are packed into rows of at most that many tokens where that
    saves rows (pack_or_pad)."""

    def __init__(self, pad_id: int, micro_batch_size: int | None = None, pad_to_multiple_of: int = 1,
                 pack_capacity: int | None = None):
        self.pad_id = pad_id
        self.micro_batch_size = micro_batch_size
        self.pad_to_multiple_of = pad_to_multiple_of
        self.pack_capacity = pack_capacity

    def batch(self, examples: list[dict]) -> SFTBatch:
        return pack_or_pad(examples, self.pad_id, self.pack_capacity, self.pad_to_multiple_of)

    def __call__(self, examples: list[dict]):
        if self.micro_batch_size is None:
            return self.batch(examples)
        chunks = [examples[i:i + self.micro_batch_size]
                  for i in range(0, len(examples), self.micro_batch_size)]
        return StepBatch([self.batch(c) for c in chunks])


@dataclass
class PreferenceBatch:
    """Chosen and rejected sequences of B pairs, concatenated for one forward pass: one
    sequence a row, or packed (several sequences a row, as pack_sft lays them out).

    input_ids:      (R, T) long. Unpacked: R = 2B, rows 0..B-1 the chosen sequences, B..2B-1
                    the rejected. Packed: R rows of up to the capacity, holding the 2B sequences.
    attention_mask: (R, T) long.
    labels:         (R, T) long; completion tokens only, -100 elsewhere (and at the first token
                    of every packed sequence, which is never a target).
    ref_logps:      (2B,) float reference log-probs computed before training, or None when
                    the reference model runs live.
    position_ids:   (R, T) long for packed rows, restarting at 0 at each sequence; else None.
    sequence_index: (R, T) long for packed rows: which sequence (0..2B-1, chosen first as
                    above) each token belongs to, -1 on padding; else None.
    """
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    ref_logps: torch.Tensor | None = None
    position_ids: torch.Tensor | None = None
    sequence_index: torch.Tensor | None = None

    @property
    def sequences(self) -> int:
        """2B: the chosen and rejected sequences (every one has tokens, so packed ones all appear)."""
        if self.sequence_index is None:
            return self.input_ids.shape[0]
        return int(self.sequence_index.max()) + 1

    @property
    def count(self) -> int:
        """Pairs: what the DPO and BT losses are averaged over."""
        return self.sequences // 2

    def per_sequence(self, values: torch.Tensor) -> torch.Tensor:
        """(R, T-1) per-next-token values (as logprobs.token_logps gives) -> (2B,) sums over each sequence."""
        return sum_per_sequence(values, self.sequence_index)

    def packed_last_tokens(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Packed rows: (rows, columns), each (2B,) long, of each sequence's last token (where
        a reward model's score is read)."""
        flat = self.sequence_index.flatten()
        where = (flat >= 0).nonzero().squeeze(1)                   # flat positions of real tokens
        last = torch.zeros(self.sequences, dtype=torch.long, device=flat.device)
        last = last.scatter_reduce(0, flat[where], where, reduce="amax")
        T = self.input_ids.shape[1]
        return last // T, last % T


def sum_per_sequence(values: torch.Tensor, sequence_index: torch.Tensor | None) -> torch.Tensor:
    """(R, T-1) per-next-token values -> one sum per sequence: per row, or packed (sequence_index
    (R, T), -1 on padding; every sequence has tokens) per sequence index. Packed: entry [r, t] goes
    to the sequence of token t+1, the token it predicts; the entry predicting a sequence's first
    token from the sequence before is unlabelled (0 in token_logps), so nothing crosses a boundary."""
    if values.dtype == torch.bool:      # counts (of a mask), as .sum() gives them
        values = values.long()
    if sequence_index is None:
        return values.sum(dim=-1)
    index = sequence_index[:, 1:]
    keep = index >= 0
    out = torch.zeros(int(sequence_index.max()) + 1, dtype=values.dtype, device=values.device)
    return out.index_add(0, index[keep], values[keep])


def concatenate_pairs(examples: list[dict], pad_id: int, pad_to_multiple_of: int = 1,
                      pack_capacity: int | None = None) -> PreferenceBatch:
    """The one place chosen and rejected are put side by side: [chosen..., rejected...], one
    a row, or with `pack_capacity` packed into rows of at most that many tokens where that
    saves rows (pack_or_pad)."""
    rows = [{"input_ids": e[f"{side}_input_ids"], "labels": e[f"{side}_labels"]}
            for side in ("chosen", "rejected") for e in examples]
    laid_out = pack_or_pad(rows, pad_id, pack_capacity, pad_to_multiple_of)
    ref = None
    if all("ref_chosen_logps" in e for e in examples):
        # Else the module scores the batch with a live reference (reference_logps.py scores what a run reaches).
        ref = torch.tensor([e["ref_chosen_logps"] for e in examples] + [e["ref_rejected_logps"] for e in examples])
    return PreferenceBatch(laid_out.input_ids, laid_out.attention_mask, laid_out.labels, ref,
                           laid_out.position_ids, laid_out.sequence_index)


class PreferenceCollator(SFTCollator):
    """DataLoader collate_fn for pairs: PreferenceBatch (validation) or StepBatch (training)."""

    def batch(self, examples: list[dict]) -> PreferenceBatch:
        return concatenate_pairs(examples, self.pad_id, self.pad_to_multiple_of, self.pack_capacity)


@dataclass
class KTOBatch:
    """B unpaired kto rows (losses/kto.py), two layouts of B sequences each (SFTBatch: one a row,
    or packed; .per_sequence sums over each sequence):

    completions: the rows' own (x_i, y_i), completion tokens labelled.
    mismatched:  (x_i, y_{i-1}), y_{-1} = y_{B-1}: each prompt with the previous row's completion,
                 TRL's shift by one within the batch, whose log-ratios estimate the KL (z0).
    desirable:   (B,) bool, the rows' labels.
    """
    completions: SFTBatch
    mismatched: SFTBatch
    desirable: torch.Tensor

    @property
    def count(self) -> int:
        """Rows: what the kto loss is averaged over."""
        return len(self.desirable)


class KTOCollator(SFTCollator):
    """DataLoader collate_fn for kto rows (tokenization.tokenize_kto_rows): KTOBatch (validation) or
    StepBatch (training). A mismatched sequence is cut to max_length by truncation, as rows are."""

    def __init__(self, pad_id: int, micro_batch_size: int | None = None, pad_to_multiple_of: int = 1,
                 pack_capacity: int | None = None, max_length: int = MAX_LENGTH, truncation: str = DEFAULT_TRUNCATION):
        super().__init__(pad_id, micro_batch_size, pad_to_multiple_of, pack_capacity)
        self.max_length, self.truncation = max_length, truncation

    def batch(self, examples: list[dict]) -> KTOBatch:
        previous = examples[-1:] + examples[:-1]
        mismatched = [dict(zip(("input_ids", "labels"), truncate(
            e["prompt_ids"] + p["completion_ids"], [IGNORE_INDEX] * len(e["prompt_ids"]) + p["completion_labels"],
            self.max_length, self.truncation))) for e, p in zip(examples, previous)]
        layout = [pack_or_pad(rows, self.pad_id, self.pack_capacity, self.pad_to_multiple_of)
                  for rows in (examples, mismatched)]
        return KTOBatch(*layout, torch.tensor([e["label"] for e in examples], dtype=torch.bool))

@dataclass
class PromptBatch:
    """Prompts for online RL; completions are sampled in the training step.

    prompt_ids: B lists of token ids (variable length; padded where they are generated from).
    prompts:    B prompt conversations (for reward models and logged samples).
    references: B reference replies or None (for the correctness reward).
    """
    prompt_ids: list
    prompts: list
    references: list

    @property
    def count(self) -> int:
        return len(self.prompt_ids)


def prompt_batch(examples: list[dict]) -> PromptBatch:
    return PromptBatch([e["prompt_ids"] for e in examples], [e["prompt"] for e in examples],
                       [e["reference"] for e in examples])


class PromptCollator(SFTCollator):
    """DataLoader collate_fn for prompts: PromptBatch (validation) or StepBatch (training)."""

    def __call__(self, examples: list[dict]):
        if self.micro_batch_size is None:
            return prompt_batch(examples)
        chunks = [examples[i:i + self.micro_batch_size] for i in range(0, len(examples), self.micro_batch_size)]
        return StepBatch([prompt_batch(c) for c in chunks])


@dataclass
class RolloutBatch:
    """Sampled completions of a PromptBatch, ready for the policy-gradient update.

    input_ids:      (N, T) long, prompt + completion, right-padded; N = prompts x completions,
                    grouped by prompt (rows g*k .. g*k+k-1 answer prompt g).
    attention_mask: (N, T) long.
    labels:         (N, T) long; completion tokens only (its end-of-turn token when reached),
                    -100 on prompt and padding.
    advantages:     (N,) float, one per completion.
    old_logps:      (N, T-1) float per-token log-probs under the sampling policy, or None
                    (one update per batch: the current policy, detached).
    ref_logps:      (N, T-1) float per-token log-probs under the reference, or None (no KL term).
    sequence_count: True to count completions (--loss-aggregation sequence), else tokens.
    """
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    advantages: torch.Tensor
    old_logps: torch.Tensor | None = None
    ref_logps: torch.Tensor | None = None
    sequence_count: bool = False

    @property
    def count(self) -> int:
        """What the loss is averaged over: completion tokens, or completions."""
        if self.sequence_count:
            return self.input_ids.shape[0]
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())


def rollout_batch(prompt_ids: list[list[int]], completion_ids: list[list[int]], advantages: torch.Tensor,
                  pad_id: int, sequence_count: bool = False) -> RolloutBatch:
    """Join each prompt with its completion (prompt_ids[i // k] for completion i, k completions
    a prompt) into a right-padded batch whose labels cover the completion tokens only."""
    k = len(completion_ids) // len(prompt_ids)
    rows = [{"input_ids": prompt_ids[i // k] + c, "labels": [IGNORE_INDEX] * len(prompt_ids[i // k]) + c}
            for i, c in enumerate(completion_ids)]
    padded = pad_sft(rows, pad_id)
    return RolloutBatch(padded.input_ids, padded.attention_mask, padded.labels, advantages,
                        sequence_count=sequence_count)


# ------------------------------------------------------------------ training order
class ResumableSampler(torch.utils.data.DistributedSampler):
    """The order of the training rows: DistributedSampler's permutation drawn from
    (seed, epoch) alone, each of `num_replicas` workers taking every num_replicas-th row,
    so a resumed run draws the same order. It starts at the first row of the epoch not yet
    trained: `trained` counts the epoch's trained batches (ResumableLoader.batch_trained),
    is reset by set_epoch to a new epoch, and restored from a checkpoint. Its length stays
    the whole epoch's, as Lightning expects of a resumed loader."""

    def __init__(self, dataset, batch_size: int, seed: int, num_replicas: int = 1, rank: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.batch_size = batch_size
        self.trained = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.trained = 0
        super().set_epoch(epoch)

    def __iter__(self):
        # A generator: the permutation and the start are read at the first batch, after set_epoch.
        indices = list(super().__iter__())
        yield from indices[self.trained * self.batch_size:]


class ResumableLoader(torch.utils.data.DataLoader):
    """The training DataLoader, with the state Lightning saves in every checkpoint and
    restores before a resumed epoch (the fit loop's "combined_loader" entry): the epoch and
    the number of its batches trained. The count advances when a batch has been trained
    (train.py's DataPosition callback), not when it is fetched."""

    def __init__(self, dataset, sampler: ResumableSampler, collate_fn):
        super().__init__(dataset, batch_size=sampler.batch_size, sampler=sampler, collate_fn=collate_fn)

    def batch_trained(self) -> None:
        self.sampler.trained += 1

    def state_dict(self) -> dict:
        return {"epoch": self.sampler.epoch, "batches": self.sampler.trained}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.epoch, self.sampler.trained = int(state["epoch"]), int(state["batches"])
