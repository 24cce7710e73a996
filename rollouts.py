"""Sampling from the policy in the middle of training, and what it measures.

    grpo:   rollout(module, step)        k completions a prompt -> rewards -> group advantages,
                                         one RolloutBatch a micro-batch, and the rollout's statistics
            grpo_eval(module, batch)     greedy replies scored by the rewards (val/reward)
    sft:    length_penalty(module, ...)  eq. 3's length term on replies sampled from the policy
                                         (on the steps length_penalty_rows says)

Both draw with a seed of (--seed, step, worker, micro-batch) (sample_seed), so a resumed run
samples what the uninterrupted one would have. They live apart from module.py, which keeps the
step (forward -> loss -> backward -> update) that consumes what is sampled here. Functions
take the LightningModule for its model, tokenizer, hyperparameters, rewards and reductions.
"""
from __future__ import annotations

import torch

import logprobs
from collate_functions import PromptBatch, RolloutBatch, SFTBatch, StepBatch, rollout_batch
from generation import sample_token_ids
from losses.grpo import group_advantages
from losses.labels import IGNORE_INDEX
from losses.length_penalty import length_penalty_surrogate


def sample_seed(seed: int, step: int, rank: int, index: int) -> int:
    """A seed per (run seed, optimizer step, worker, micro-batch): the same samples after a resume."""
    return ((seed * 1_000_003 + step) * 1009 + rank) * 101 + index


def completion_token_logps(model, batch: RolloutBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, T-1) log-probs of the completion tokens (0 elsewhere) and their (N, T-1) mask."""
    logps = logprobs.token_logps(model, batch.input_ids, batch.attention_mask, batch.labels)
    return logps, batch.labels[:, 1:] != IGNORE_INDEX


def rollout_sums(rewards: torch.Tensor, completions: list[list[int]], parts: dict, eos_id: int) -> dict:
    """Statistics of one micro-batch's rollout as sums with their counts: rewards (B, k) of
    B prompts x k completions, the completions' token ids, each reward function's values."""
    lengths = [len(c) for c in completions]
    n = len(lengths)
    sums = {"_reward_sum": float(rewards.sum()), "_reward_sq": float((rewards ** 2).sum()), "_reward_n": n,
            # Groups whose completions all scored the same: zero advantages, nothing learned.
            "frac_reward_zero_std": float((rewards.max(dim=1).values == rewards.min(dim=1).values).sum()),
            "_count/frac_reward_zero_std": rewards.shape[0],
            "completion_length": sum(lengths), "_count/completion_length": n,
            "completion_truncated": sum(1 for c in completions if not c or c[-1] != eos_id),
            "_count/completion_truncated": n,
            "_min/completion_length": min(lengths), "_max/completion_length": max(lengths)}
    for name, values in parts.items():
        sums[f"reward/{name}"], sums[f"_count/reward/{name}"] = sum(values), len(values)
    return sums


def merge_sums(into: dict, sums: dict) -> None:
    """Accumulate statistics: added, except "_min/" and "_max/" entries (min and max)."""
    for name, value in sums.items():
        if name not in into:
            into[name] = value
        elif name.startswith("_min/"):
            into[name] = min(into[name], value)
        elif name.startswith("_max/"):
            into[name] = max(into[name], value)
        else:
            into[name] += value


@torch.no_grad()
def rollout(module, step: StepBatch) -> tuple[StepBatch, dict]:
    """Sample --num-generations completions for every prompt of the step, score them, and
    turn each micro-batch into a RolloutBatch with group advantages (and, where needed, the
    sampling policy's and the reference's token log-probs). Also returns the rollout's
    statistics as additive sums ("_min/" and "_max/" entries excepted). The first micro-batch's
    first two groups are kept in module._samples for log_samples."""
    cfg, tok, device = module.config, module.tokenizer, module.device
    k = cfg.grpo.num_generations
    out, sums = [], {}
    for i, mb in enumerate(step.micro_batches):
        groups = sample_token_ids(module.model, tok, mb.prompt_ids, max_new_tokens=cfg.sampling.max_new_tokens,
                                  num_return_sequences=k, temperature=cfg.sampling.temperature, top_p=cfg.sampling.top_p,
                                  seed=sample_seed(cfg.run.seed, module.global_step, module.global_rank, i),
                                  progress=f"rollouts {i + 1}/{len(step.micro_batches)}")
        completions = [c for g in groups for c in g]                       # N = B * k, grouped by prompt
        texts = [t.strip() for t in tok.batch_decode(completions, skip_special_tokens=True)]
        prompts = [p for p in mb.prompts for _ in range(k)]
        total, parts = module.rewards.score(prompts, texts, [r for r in mb.references for _ in range(k)],
                                            [len(c) for c in completions], cfg.sampling.max_new_tokens)
        rewards = torch.tensor(total, dtype=torch.float32).view(-1, k)    # (B, k)
        advantages = group_advantages(rewards, cfg.grpo.advantage).view(-1)     # (N,)
        batch = rollout_batch(mb.prompt_ids, completions, advantages, tok.pad_token_id,
                              sequence_count=cfg.grpo.loss_aggregation == "sequence")
        batch = RolloutBatch(batch.input_ids.to(device), batch.attention_mask.to(device),
                             batch.labels.to(device), advantages.to(device), sequence_count=batch.sequence_count)
        if cfg.grpo.num_iterations > 1:
            batch.old_logps = completion_token_logps(module.model, batch)[0]
        if cfg.grpo.kl_coef > 0:
            with module.reference() as ref:     # a frozen copy, or the policy with its adapters disabled
                batch.ref_logps = completion_token_logps(ref, batch)[0]
        out.append(batch)
        merge_sums(sums, rollout_sums(rewards, completions, parts, tok.eos_token_id))
        if i == 0:
            module._samples = list(zip(prompts, texts, total))[:k * 2]
    return StepBatch(out), sums


def reduce_rollout(module, sums: dict) -> dict:
    """Rollout statistics over workers: sums added, "_min/" and "_max/" entries by min and max."""
    extremes = {k: sums.pop(k) for k in list(sums) if k.startswith(("_min/", "_max/"))}
    reduced = module.reduce_sums(sums)
    for k, v in extremes.items():
        t = torch.tensor(float(v), device=module.device)
        if module.trainer.world_size > 1:
            op = torch.distributed.ReduceOp.MIN if k.startswith("_min/") else torch.distributed.ReduceOp.MAX
            torch.distributed.all_reduce(t, op=op)
        reduced[k] = t.item()
    return reduced


@torch.no_grad()
def grpo_eval(module, batch: PromptBatch) -> tuple[None, dict]:
    """Validation of an RL policy: greedy replies to the prompts, scored by the rewards
    (val/reward, val/reward/<function>: with the correctness function, exact-match accuracy)."""
    cfg, tok = module.config, module.tokenizer
    groups = sample_token_ids(module.model, tok, batch.prompt_ids, max_new_tokens=cfg.sampling.max_new_tokens, temperature=0.0)
    completions = [g[0] for g in groups]
    texts = [t.strip() for t in tok.batch_decode(completions, skip_special_tokens=True)]
    lengths = [len(c) for c in completions]
    total, parts = module.rewards.score(batch.prompts, texts, batch.references, lengths, cfg.sampling.max_new_tokens)
    sums = {"reward": sum(total), "count": batch.count, "completion_length": sum(lengths)}
    sums.update({f"reward/{name}": sum(values) for name, values in parts.items()})
    return None, sums


def log_samples(module) -> None:
    """A few sampled completions of the last rollout, as a Markdown table in TensorBoard."""
    if not module._samples or not module.trainer.is_global_zero or module.logger is None:
        return

    def cell(text):
        return str(text).replace("|", "\\|").replace("\n", "<br>")
    rows = [f"| {cell(p[-1]['content'])} | {cell(c)} | {r:.3f} |" for p, c, r in module._samples]
    module.logger.experiment.add_text("train/completions", "| prompt | completion | reward |\n|---|---|---|\n"
                                      + "\n".join(rows), module.global_step)


def length_penalty_rows(module, step: StepBatch) -> torch.Tensor | None:
    """The length penalty's denominator for this step: its rows on an average worker; None on a
    step without the penalty (not sft, --length-penalty 0, or off its --length-penalty-every)."""
    cfg = module.config
    if not (cfg.run.training_type == "sft" and cfg.sft.length_penalty > 0 and module.global_step % cfg.sft.length_penalty_every == 0):
        return None
    rows = sum(mb.input_ids.shape[0] for mb in step.micro_batches)
    summed = module.reduce_sum(torch.as_tensor(rows, dtype=torch.float32, device=module.device))
    return summed / module.trainer.world_size


def length_penalty(module, batch: SFTBatch, sequences: float, step: int, index: int) -> tuple[torch.Tensor, dict]:
    """Seed eq. 3's term lambda * E[max(0, len(y_hat) - len(y))^2] on this micro-batch, as a
    REINFORCE surrogate (see losses/length_penalty.py). y_hat is sampled from the current
    policy for the prompt of each row: the tokens before its last assistant turn. Returns the
    surrogate (its share of the mean over the step's `sequences`) and additive statistics."""
    cfg, device = module.config, module.device
    supervised = batch.labels != IGNORE_INDEX                        # (B, T)
    prompt_ids, ref_lengths = [], []
    for b in range(batch.input_ids.shape[0]):
        # The last assistant turn is the last run of consecutive supervised positions; its
        # length counts the reply and its end-of-turn token, as the sample's does.
        row = supervised[b].tolist()
        end = len(row) - row[::-1].index(True)
        start = end
        while start > 0 and row[start - 1]:
            start -= 1
        prompt_ids.append(batch.input_ids[b, :start].tolist())
        ref_lengths.append(end - start)
    groups = sample_token_ids(module.model, module.tokenizer, prompt_ids, max_new_tokens=cfg.sampling.max_new_tokens,
                              temperature=cfg.sampling.temperature, top_p=cfg.sampling.top_p,
                              seed=sample_seed(cfg.run.seed, step, module.global_rank, index))
    samples = [g[0] for g in groups]
    sampled = rollout_batch(prompt_ids, samples, torch.zeros(len(samples)), module.tokenizer.pad_token_id)
    logps = logprobs.sequence_logps(module.model, sampled.input_ids.to(device), sampled.attention_mask.to(device),
                                    sampled.labels.to(device))                                         # (B,)
    out = length_penalty_surrogate(logps, torch.tensor([len(c) for c in samples], dtype=torch.float32, device=device),
                                   torch.tensor(ref_lengths, dtype=torch.float32, device=device), cfg.sft.length_penalty)
    return out.surrogate.sum() / max(float(sequences), 1.0), {
        "length_penalty": out.penalties.sum(), "_count/length_penalty": len(samples),
        "sampled_length": float(sum(len(c) for c in samples)), "_count/sampled_length": len(samples)}
