"""bench/run.py's grpo workload, both sides: a whole GRPO step (rollouts sampled with the KV cache,
rewards, group advantages, the update), train.py's against TRL 1.16's GRPOTrainer.

The same work on both sides: --batch-size prompts a step (the hh-rlhf slice's, tokenised once by
tokenization.py with the generation prompt; TRL samples from those ids), --num-generations completions
of each, at most --max-new-tokens tokens long, sampled by transformers' generate (dynamic KV cache, no
vLLM) at temperature 1.0, top-p 1.0 and no top-k, until the end-of-turn token; the same reward, rewards.py's
GRPO_REWARD function (bench/workloads.py), which TRL calls through `trl_reward`; group advantages
(R - mean) / (std + 1e-4) with Bessel's std (ours --advantage grpo, TRL scale_rewards="group"); one update
a rollout (num_iterations 1: the ratio is 1, nothing is clipped; clip range 0.2), no reference model
(--kl-coef 0, TRL beta=0), and the AdamW, clipping and precision of the other workloads. One optimizer
step is one generation round: TRL's per_device_train_batch_size counts completions, so it is
batch size x k, with one accumulation step and steps_per_generation 1; ours is one micro-batch of
--batch-size prompts. Loss aggregation: our default --loss-aggregation token (the per-token loss summed
over the step's completion tokens, divided by their number) is TRL's loss_type "dapo" (its default, which
divides by the completion tokens of the generation round, here the step's); TRL's "bnpo" divides by each
micro-batch's own, the same here but not under accumulation.

Ours is train.py's step for --training-type grpo (PostTrainingModule.training_step: rollouts.rollout ->
loss -> backward -> clip -> AdamW) with rewards.Rewards.from_config as train.py builds it; TRL's is its
Trainer.train(). Each side also times its rollout: rollouts.rollout (sampling, rewards, advantages,
the update's batch) and TRL's _generate_and_score_completions (the same); the rest of a step is the update.

Loss check: TRL's first generation round (what its compute_loss receives), scored by TRL's compute_loss
and by our module, our RolloutBatch joined from the same prompt and completion ids as rollouts.rollout
joins its own. With one update a rollout the ratio is 1, so either loss equals -sum_i A_i n_i / sum_i n_i
(n_i: completion i's tokens) whatever the log-probs; the check therefore also compares the completion
tokens' log-probs (the gradient's other factor), TRL's _get_per_token_logps_and_entropies against
logprobs.token_logps. Random weights rarely sample the end-of-turn token, so their completions all run to
the budget and score alike: every advantage is 0 and every length the same, and the losses would agree
whatever each side computed (at 0, and blind to how each weighs completions of different lengths). Where a
round is like that, both sides get seeded standard-normal advantages, and completions cut to seeded
lengths (their masks shortened), instead ("substituted" in the JSON lists which).
"""
from __future__ import annotations

import json
import os
import time

from bench.trl_side import common_args, train_timed
from bench.workloads import bench_tokenizer, fit_timed, our_config, tokenized_rows

# Our --loss-aggregation -> the TRL loss_type with the same normaliser (see above); the bench runs our default.
# ("sequence", summed over a completion's tokens and averaged over completions, has the form of TRL's "luspo",
# which TRL means for sequence-level ratios.)
TRL_LOSS_TYPES = {"token": "dapo"}


def time_calls(owner, name: str, count) -> list[tuple[float, int, int]]:
    """Wrap owner.<name> (rollouts.rollout, or TRL's _generate_and_score_completions on its trainer):
    every call appends (its wall seconds, completion tokens, total tokens) to the list returned, the
    tokens counted by count(result) after the clock stops."""
    calls, real = [], getattr(owner, name)

    def timed(*args, **kwargs):
        start = time.perf_counter()
        out = real(*args, **kwargs)
        calls.append((time.perf_counter() - start, *count(out)))
        return out
    setattr(owner, name, timed)
    return calls


def per_step(calls: list[tuple[float, int, int]]) -> dict:
    """time_calls' record as bench/run.py's per-step lists: the rollout's seconds, the completion
    tokens sampled ("supervised") and the prompt + completion tokens the update scores ("total")."""
    return {"rollout_times": [c[0] for c in calls], "supervised": [c[1] for c in calls],
            "total": [c[2] for c in calls]}


def run_ours_grpo(workload: str, variant: str, args, folder: str) -> dict:
    """Our configuration: train.py's grpo step on the prompts, timed as bench/run.py times the others."""
    import torch

    import rollouts
    from collate_functions import PromptCollator
    from losses.labels import IGNORE_INDEX
    from models import load_causal_lm
    from module import PostTrainingModule
    from rewards import Rewards
    tokenizer = bench_tokenizer(args, folder)
    steps = args.warmup + args.steps
    rows = tokenized_rows(workload, tokenizer, args.max_length, steps * args.batch_size)
    config = our_config(workload, args, packing=False)
    module = PostTrainingModule(config, model=load_causal_lm(os.path.join(folder, "lm")), tokenizer=tokenizer,
                                rewards=Rewards.from_config(config))
    # module.py calls rollouts.rollout through the module: the wrapper sees every step's rollout.
    calls = time_calls(rollouts, "rollout", lambda out: (
        sum(int((mb.labels[:, 1:] != IGNORE_INDEX).sum()) for mb in out[0].micro_batches),
        sum(int(mb.attention_mask.sum()) for mb in out[0].micro_batches)))
    loader = torch.utils.data.DataLoader(rows, batch_size=args.batch_size, shuffle=False,
                                         collate_fn=PromptCollator(tokenizer.pad_token_id, args.batch_size))
    return {**fit_timed(module, loader, steps), **per_step(calls), "loss_check": None}


def trl_reward(name: str, max_new_tokens: int):
    """rewards.py's function `name` as a TRL reward function ((prompts, completions, completion_ids,
    dataset columns) -> a float a completion), given what rollouts.rollout gives it: the completion's
    text without special tokens, stripped; its reference; its token count, end-of-turn token included."""
    from rewards import REWARD_FUNCTIONS
    fn = REWARD_FUNCTIONS[name]

    def reward(prompts, completions, completion_ids, reference, **_):
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]  # conversational: [message]
        return [fn(p, t.strip(), r, len(ids), max_new_tokens)
                for p, t, ids, r in zip(prompts, texts, completion_ids, reference)]
    reward.__name__ = name
    return reward


def trl_rollout_batch(inputs: dict, pad_id: int):
    """TRL's generation round as our RolloutBatch: each row's prompt (its left padding dropped) and
    completion (right padding dropped) joined by collate_functions.rollout_batch, with TRL's advantages."""
    from collate_functions import rollout_batch
    prompts = [ids[m.bool()].tolist() for ids, m in zip(inputs["prompt_ids"], inputs["prompt_mask"])]
    completions = [ids[m.bool()].tolist() for ids, m in zip(inputs["completion_ids"], inputs["completion_mask"])]
    return rollout_batch(prompts, completions, inputs["advantages"].float(), pad_id)


def run_trl_grpo(workload: str, variant: str, args, folder: str) -> dict:
    """A TRL configuration: GRPOTrainer on the same prompts and reward, after the loss check."""
    import torch
    from datasets import Dataset

    import rollouts
    import trl
    from models import load_causal_lm
    from module import PostTrainingModule
    from rewards import Rewards
    tokenizer = bench_tokenizer(args, folder)
    steps = args.warmup + args.steps
    rows = tokenized_rows(workload, tokenizer, args.max_length, steps * args.batch_size)
    config = our_config(workload, args, packing=False)
    g, s = config.grpo, config.sampling
    funcs = Rewards.from_config(config).funcs
    settings = trl.GRPOConfig(**dict(common_args(args, variant), per_device_train_batch_size=args.batch_size
                                     * g.num_generations),
                              gradient_accumulation_steps=1, steps_per_generation=1, num_generations=g.num_generations,
                              max_completion_length=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
                              top_k=0, num_iterations=g.num_iterations, beta=g.kl_coef, epsilon=g.clip_range,
                              scale_rewards="group", loss_type=TRL_LOSS_TYPES[g.loss_aggregation],
                              reward_weights=[w for _, w in funcs], shuffle_dataset=False, use_vllm=False)
    prompt_ids = {json.dumps(r["prompt"], sort_keys=True): r["prompt_ids"] for r in rows}

    class PreTokenizedGRPOTrainer(trl.GRPOTrainer):
        """Samples from our prompt ids, as the other workloads give TRL pre-tokenised rows."""

        def _tokenize_prompts(self, prompts):
            return [prompt_ids[json.dumps(p, sort_keys=True)] for p in prompts], None, {}
    trainer = PreTokenizedGRPOTrainer(
        model=load_causal_lm(os.path.join(folder, "lm")), args=settings, processing_class=tokenizer,
        reward_funcs=[trl_reward(name, s.max_new_tokens) for name, _ in funcs],
        train_dataset=Dataset.from_list([{"prompt": r["prompt"], "reference": r["reference"]} for r in rows]))
    if trainer.eos_token_ids != [tokenizer.eos_token_id]:
        raise SystemExit(f"TRL stops completions at {trainer.eos_token_ids}, ours at {tokenizer.eos_token_id} only.")

    # Loss check on TRL's first generation round (see above). TRL's rollout and loss follow
    # model.training, and dapo's normaliser reads the accumulation steps Trainer.train() would set.
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    inputs = trainer._generate_and_score_completions(next(iter(trainer.get_train_dataloader())))
    substituted, seeded = [], torch.Generator().manual_seed(args.seed)
    if (inputs["advantages"] == 0).all():
        substituted.append("advantages")
        inputs["advantages"] = torch.randn(inputs["advantages"].shape, generator=seeded)
    lengths, width = inputs["completion_mask"].sum(1), inputs["completion_mask"].shape[1]
    if (lengths == lengths[0]).all():
        substituted.append("lengths")
        keep = torch.randint(1, width + 1, lengths.shape, generator=seeded)
        inputs["completion_mask"] = (torch.arange(width) < keep[:, None]).to(inputs["completion_mask"].dtype)
        inputs["num_items_in_batch"] = inputs["completion_mask"].sum()
    batch = trl_rollout_batch(inputs, tokenizer.pad_token_id)
    ours = PostTrainingModule(config, model=trainer.model, tokenizer=tokenizer)
    with torch.no_grad():
        trl_loss = float(trainer.compute_loss(trainer.model, inputs))
        our_loss = float(ours.compute(batch)[0])
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        trl_logps = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask,
                                                               inputs["completion_ids"].shape[1])[0]
        our_logps, our_mask = rollouts.completion_token_logps(trainer.model, batch)
    # Both in row order, each row's completion tokens in order.
    logps_error = float((trl_logps[inputs["completion_mask"].bool()] - our_logps[our_mask]).abs().max())
    del ours

    calls = time_calls(trainer, "_generate_and_score_completions", lambda out: (
        int(out["completion_mask"].sum()), int(out["prompt_mask"].sum() + out["completion_mask"].sum())))
    return {**train_timed(trainer), **per_step(calls),
            "loss_check": {"trl": trl_loss, "ours": our_loss, "logps_max_abs_error": logps_error,
                           "substituted": substituted}}
