"""One LightningModule for every training type.

    training_step: for each micro-batch of the step: forward -> loss fn (from the registry)
                   -> backward; then clip, optimizer step, scheduler step, log.
    SFT batches: token log-probs (logprobs.py: the LM head only at supervised positions, in
    chunks; packed rows keep attention within each sequence) -> masked cross-entropy.
    Preference batches (DPO): chosen
    and rejected in one forward -> summed completion log-probs -> DPO loss against the
    reference log-probs (cached with the data, or a live frozen reference). Preference
    batches (bt): chosen and rejected in one forward of the reward model -> one reward per
    sequence (reward_model.sequence_rewards) -> Bradley-Terry loss. Prompt batches (grpo):
    a rollout first (k sampled completions a prompt -> rewards -> group advantages), then
    the completions' token log-probs -> clipped policy-gradient loss with a KL penalty.

Optimization is manual so that a gradient-accumulation window is one DataLoader item
(a `StepBatch`): the loss of each micro-batch is divided by the supervised tokens (SFT) or
pairs (DPO) of the whole step, summed over DDP workers, which makes accumulation and data parallelism give
exactly the update of one large batch (see losses/sft.py).

Validation logs val/loss (token-mean over the whole validation set), val/perplexity =
exp(val/loss), val/edit_distance: the mean character Levenshtein distance between the
greedy reply and the reference reply on the first --val-generations validation prompts,
val/reply_length: those replies' mean length in tokens,
and with --calculate-win-rate val/win_rate (judges.py) against a reference model.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass

import lightning as L
import torch
from rapidfuzz.distance import Levenshtein

import logprobs
from collate_functions import PreferenceBatch, PromptBatch, RolloutBatch, SFTBatch, StepBatch, rollout_batch
from compilation import compile_for_training
from generation import generate_completions, generate_replies, sample_token_ids
from losses import LOSSES
from losses.dpo import IGNORE_INDEX
from losses.grpo import group_advantages
from losses.length_penalty import length_penalty_surrogate
from models import load_model, load_trained
from reward_model import sequence_rewards

log = logging.getLogger("train")


class NonFiniteLossError(RuntimeError):
    """--max-nonfinite-steps optimizer steps in a row had a non-finite loss or gradient; the
    message is one sentence naming the step and batch."""


def warmup_linear_decay(step: int, total_steps: int, warmup_steps: int) -> float:
    """LR multiplier: linear 0 -> 1 over warmup, then linear 1 -> 0 at total_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def adamw(params, lr: float, weight_decay: float, fused: bool = True) -> torch.optim.AdamW:
    """AdamW, betas (0.9, 0.999). Fused (one kernel over all parameters, CPU and CUDA): the same
    update to float rounding, in an eighth of the time of the default multi-tensor loop on CPU,
    which with a 152k-token vocabulary was ~10% of a reward-model step (README, Performance).
    Left unfused under FSDP, whose sharded parameters it is not checked with here."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999), fused=fused)


def attention_mask(model, batch) -> torch.Tensor | None:
    """The batch's attention mask, or None for packed rows (SFTBatch or PreferenceBatch with
    position_ids): their positions say where each sequence starts, once the model is known
    to keep attention within each one."""
    if batch.position_ids is None:
        return batch.attention_mask
    if not logprobs.supports_packing(model):
        raise RuntimeError(f"{type(model).__name__} does not keep attention within packed "
                           f"sequences (its mask ignores position_ids); train with --no-packing.")
    return None


def sequence_logps(model, batch: PreferenceBatch) -> torch.Tensor:
    """(2B,) summed completion log-probs of the batch's sequences (packed or not) under `model`."""
    return batch.per_sequence(logprobs.token_logps(model, batch.input_ids, attention_mask(model, batch),
                                                   batch.labels, batch.position_ids))


def rng_states() -> dict:
    """This process's random number generators' states, in types a weights-only load accepts."""
    import random

    import numpy as np
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states = {"torch": torch.get_rng_state(), "python": random.getstate(),
              "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    import random

    import numpy as np
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


@dataclass
class WinRateSetup:
    """What --calculate-win-rate needs: evaluation prompts with their reference replies (for
    the correctness judge), the model to compare against (a name, path or checkpoint, loaded
    once per worker to answer its share of the prompts, then freed), the judge, generation
    settings shared by both models, and the folder the per-prompt JSONL files go to."""
    prompts: list
    references: list
    reference_model: str
    judge: object
    generation: dict
    out_dir: str


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


class PostTrainingModule(L.LightningModule):
    """Args:
        config: the resolved flags (a plain dict; saved with every checkpoint).
        model: the policy; loaded from config["model_name"] when None.
        tokenizer: needed for validation generations.
        val_prompts: (prompt messages, reference reply) pairs for val/edit_distance.
        reference: the frozen reference model for DPO with a live reference pass (None when
            reference log-probs are precomputed and travel with the data).
        win_rate: set up --calculate-win-rate (val/win_rate at every validation).
        verifier_rows: sft_verifier's (verification prompt, "Yes"/"No") rows scored at every
            validation (val/verifier_score, val/verifier_accuracy).
        rewards: grpo's rewards.Rewards (reward functions and/or a reward model).
    """

    def __init__(self, config: dict, model=None, tokenizer=None,
                 val_prompts: list[tuple[list[dict], str]] | None = None, reference=None,
                 win_rate: WinRateSetup | None = None, verifier_rows: list[tuple[str, str]] | None = None,
                 rewards=None, metadata: dict | None = None):
        super().__init__()
        self.save_hyperparameters(config)
        self.model = model if model is not None else load_model(
            config["training_type"], config["model_name"], tokenizer, config.get("trust_remote_code", False))
        if config.get("activation_checkpointing"):
            if not getattr(self.model, "supports_gradient_checkpointing", False):
                from flags import ConfigError
                raise ConfigError(f"--activation-checkpointing: {type(self.model).__name__} does not support "
                                  f"activation checkpointing in transformers.")
            # Non-reentrant: correct with inputs that need no gradient and with the no-grad probes of logprobs.py.
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        if config.get("compile"):
            # The decoder (base model) the training forward runs, compiled beside the model, not
            # wrapped into it: state_dict keys and exports stay as uncompiled (compilation.py).
            compile_for_training(self.model)
        self.tokenizer = tokenizer
        self.val_prompts = val_prompts or []
        self.loss_fn = LOSSES[config["training_type"]]
        self.automatic_optimization = False
        self._eval_sums = None
        # A list keeps the reference out of the module tree: not trained, not checkpointed.
        self._reference = [reference.eval().requires_grad_(False)] if reference is not None else []
        self.win_rate = win_rate
        self._reference_replies = None      # this worker's share, generated once
        self.verifier_rows = verifier_rows or []
        self._nonfinite_streak = self._nonfinite_total = 0       # skipped steps: in a row, in all
        self.rewards = rewards
        self._samples = None        # a few (prompt, completion, reward) of the last rollout, for TensorBoard
        self.metadata = metadata or {}      # code version and data fingerprint, written into every checkpoint
        self._rng_to_restore = None
        self._resumed = False

    # ------------------------------------------------------------------ helpers
    def _reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over DDP workers (identity in a single process)."""
        if self.trainer.world_size > 1:
            return self.trainer.strategy.reduce(values, reduce_op="sum")
        return values

    def _reduce_sums(self, sums: dict) -> dict:
        """Sum every statistic over DDP workers in one collective."""
        keys = sorted(sums)
        values = self._reduce_sum(torch.stack([torch.as_tensor(sums[k], dtype=torch.float32, device=self.device)
                                               for k in keys]))
        return dict(zip(keys, values.tolist()))

    def _log(self, name: str, value, **kwargs) -> None:
        value = float(value)
        if self.hparams.roundoff is not None:
            value = round(value, self.hparams.roundoff)
        self.log(name, value, **kwargs)

    # ------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Beside Lightning's state (weights, optimizer, scheduler, loops and the training
        loader's position): the run's metadata, the skipped-step counters, and every worker's
        RNG states (torch, CUDA, Python, NumPy), so a resumed run draws what this one would have."""
        checkpoint["run_metadata"] = {**self.metadata, "training_type": self.hparams.training_type}
        checkpoint["nonfinite_steps"] = {"streak": self._nonfinite_streak, "total": self._nonfinite_total}
        states = rng_states()
        if self.trainer.world_size > 1:     # every worker saves (Lightning calls this hook on all ranks)
            gathered = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, states)
            checkpoint["rng_states"] = gathered
        else:
            checkpoint["rng_states"] = [states]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        counts = checkpoint.get("nonfinite_steps", {})
        self._nonfinite_streak, self._nonfinite_total = counts.get("streak", 0), counts.get("total", 0)
        states = checkpoint.get("rng_states") or [None]
        # Applied when training starts (after Lightning's restore, which may draw numbers).
        self._rng_to_restore = states[self.global_rank] if self.global_rank < len(states) else states[0]
        self._resumed = True

    def on_train_start(self) -> None:
        if not self._resumed:
            return
        self._resumed = False
        if self._rng_to_restore is not None:
            set_rng_states(self._rng_to_restore)
            self._rng_to_restore = None
        # The optimizer restored the learning rate of the saved step under the saved run's
        # schedule; the schedule of this run (its length may differ: a larger --max-steps)
        # decides it from here on. Unchanged when the schedule is the same.
        sched = self.lr_schedulers()
        lrs = [base * rule(sched.last_epoch) for base, rule in zip(sched.base_lrs, sched.lr_lambdas)]
        for group, lr in zip(sched.optimizer.param_groups, lrs):
            group["lr"] = lr
        sched._last_lr = lrs

    def on_fit_start(self) -> None:
        for ref in self._reference:
            ref.to(self.device)
        if self.rewards is not None:
            self.rewards.to(self.device)

    # ------------------------------------------------- forward -> loss -> sums
    def compute(self, batch, normalizer=None) -> tuple[torch.Tensor, dict]:
        """Loss of one micro-batch (its share of the step's mean) and additive statistics."""
        if isinstance(batch, RolloutBatch):
            return self._grpo(batch, normalizer)
        if isinstance(batch, PromptBatch):
            return self._grpo_eval(batch)
        if self.hparams.training_type == "bt":
            return self._bt(batch, normalizer)
        if isinstance(batch, PreferenceBatch):
            return self._dpo(batch, normalizer)
        if self.hparams.training_type == "sft_verifier":
            return self._sft_verifier(batch, normalizer)
        return self._sft(batch, normalizer)

    def accumulate_gradients(self, step: StepBatch) -> tuple[float, dict]:
        """Forward and backward of every micro-batch of a step, outside Lightning (one process,
        no all-reduce, no length penalty): the gradients of the step's mean loss. Returns that
        loss and the summed statistics. The benchmarks and the tests that compare steps use
        it; training_step is the full version."""
        total, sums = 0.0, {}
        for mb in step.micro_batches:
            loss, stats = self.compute(mb, step.count)
            loss.backward()
            total += loss.item()
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        return total, sums

    def _token_nll(self, batch: SFTBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T-1) NLL of each supervised next token (0 elsewhere) and the (B, T-1) bool mask."""
        logps = logprobs.token_logps(self.model, batch.input_ids, attention_mask(self.model, batch),
                                     batch.labels, batch.position_ids)
        return -logps, batch.labels[:, 1:] != IGNORE_INDEX

    def _sft(self, batch: SFTBatch, normalizer=None):
        out = self.loss_fn(*self._token_nll(batch), normalizer)
        return out.loss, {"loss": out.nll_sum, "count": out.num_tokens}

    def _sft_verifier(self, batch: SFTBatch, normalizer=None):
        nll, mask = self._token_nll(batch)
        out = self.loss_fn(nll, mask, batch.generate_mask, self.hparams.lambda_, normalizer)
        return out.loss, {"loss_verify": out.nll_verify, "_count/loss_verify": out.tokens_verify,
                          "loss_correct": out.nll_correct, "_count/loss_correct": out.tokens_correct,
                          "count": out.tokens_verify + out.tokens_correct}

    @torch.no_grad()
    def reference_logps(self, batch: PreferenceBatch) -> torch.Tensor:
        """(2B,) completion log-probs under the reference: cached with the data, or a live pass."""
        if batch.ref_logps is not None:
            return batch.ref_logps.to(self.device)
        if not self._reference:
            # Precomputed mode, and a row the run was not expected to reach (reference_logps.py):
            # the starting model, loaded now, is the reference.
            from models import load_causal_lm
            log.warning("scoring reference log-probs live for rows that were not precomputed: loading %s",
                        self.hparams.model_name)
            self._reference = [load_causal_lm(self.hparams.model_name, self.hparams.trust_remote_code)
                               .to(self.device).eval().requires_grad_(False)]
        return sequence_logps(self._reference[0], batch)

    def _dpo(self, batch: PreferenceBatch, normalizer=None):
        logps = sequence_logps(self.model, batch)                                        # (2B,)
        ref = self.reference_logps(batch)
        B = batch.count
        chosen_tokens = batch.per_sequence(batch.labels[:, 1:] != IGNORE_INDEX)[:B]           # (B,)
        out = self.loss_fn(logps[:B], logps[B:], ref[:B], ref[B:], self.hparams.beta, self.hparams.rpo_alpha,
                           chosen_tokens)
        denom = torch.as_tensor(B if normalizer is None else normalizer, dtype=torch.float32)
        chosen, rejected = out.chosen_rewards, out.rejected_rewards
        sums = {"loss": out.losses.detach().sum(), "count": B, "rewards/chosen": chosen.sum(),
                "rewards/rejected": rejected.sum(), "rewards/accuracies": (chosen > rejected).sum(),
                "rewards/margins": (chosen - rejected).sum(), "logps/chosen": logps[:B].detach().sum(),
                "logps/rejected": logps[B:].detach().sum(),
                # log pi(y_w|x) - log pi_ref(y_w|x) on the chosen replies: a sample estimate of KL(pi || pi_ref)
                "kl": (logps[:B].detach() - ref[:B]).sum()}
        return out.losses.sum() / denom.clamp(min=1), sums

    def _bt(self, batch: PreferenceBatch, normalizer=None):
        mask = attention_mask(self.model, batch)
        last = batch.packed_last_tokens() if mask is None else None
        rewards = sequence_rewards(self.model, batch.input_ids, mask, batch.position_ids, last)   # (2B,)
        B = batch.count
        out = self.loss_fn(rewards[:B], rewards[B:], self.hparams.center_rewards_coefficient)
        denom = torch.as_tensor(B if normalizer is None else normalizer, dtype=torch.float32)
        r = rewards.detach()
        sums = {"loss": out.losses.detach().sum(), "count": B, "accuracy": (out.margins > 0).sum(),
                "margin": out.margins.sum(), "rewards/chosen": r[:B].sum(), "rewards/rejected": r[B:].sum(),
                "_reward_sum": r.sum(), "_reward_sq": (r ** 2).sum()}
        return out.losses.sum() / denom.clamp(min=1), sums

    # --------------------------------------------------------------------- grpo
    def _policy_token_logps(self, model, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, T-1) log-probs of the completion tokens (0 elsewhere) and their (N, T-1) mask."""
        logps = logprobs.token_logps(model, batch.input_ids, batch.attention_mask, batch.labels)
        return logps, batch.labels[:, 1:] != IGNORE_INDEX

    def _grpo(self, batch: RolloutBatch, normalizer=None):
        hp = self.hparams
        logps, mask = self._policy_token_logps(self.model, batch)
        old = batch.old_logps if batch.old_logps is not None else logps.detach()
        out = self.loss_fn(logps, old, batch.advantages, mask, batch.ref_logps, hp.kl_coef, hp.clip_range)
        tokens = mask.sum()
        total = out.per_token.sum()
        denom = torch.as_tensor(batch.count if normalizer is None else normalizer, dtype=torch.float32)
        return total / denom.clamp(min=1), {
            "loss": total.detach(), "count": batch.count, "kl": out.kl.sum(), "_count/kl": tokens,
            "clip_fraction": out.clipped.sum(), "_count/clip_fraction": tokens}

    @torch.no_grad()
    def _rollout(self, step: StepBatch, batch_idx: int) -> tuple[StepBatch, dict]:
        """Sample --num-generations completions for every prompt of the step, score them, and
        turn each micro-batch into a RolloutBatch with group advantages (and, where needed, the
        sampling policy's and the reference's token log-probs). Also returns the rollout's
        statistics as additive sums ("_min/" and "_max/" entries excepted)."""
        hp, tok = self.hparams, self.tokenizer
        k = hp.num_generations
        out, sums = [], {}
        for i, mb in enumerate(step.micro_batches):
            # A seed per (step, worker, micro-batch): the same samples after a resume.
            seed = ((hp.seed * 1_000_003 + self.global_step) * 1009 + self.global_rank) * 101 + i
            groups = sample_token_ids(self.model, tok, mb.prompt_ids, max_new_tokens=hp.max_new_tokens,
                                      num_return_sequences=k, temperature=hp.temperature, top_p=hp.top_p,
                                      seed=seed, progress=f"rollouts {i + 1}/{len(step.micro_batches)}")
            completions = [c for g in groups for c in g]                       # N = B * k, grouped by prompt
            texts = [t.strip() for t in tok.batch_decode(completions, skip_special_tokens=True)]
            prompts = [p for p in mb.prompts for _ in range(k)]
            total, parts = self.rewards.score(prompts, texts, [r for r in mb.references for _ in range(k)],
                                              [len(c) for c in completions], hp.max_new_tokens)
            rewards = torch.tensor(total, dtype=torch.float32).view(-1, k)    # (B, k)
            advantages = group_advantages(rewards, hp.advantage).view(-1)     # (N,)
            batch = rollout_batch(mb.prompt_ids, completions, advantages, tok.pad_token_id,
                                  sequence_count=hp.loss_aggregation == "sequence")
            batch = RolloutBatch(batch.input_ids.to(self.device), batch.attention_mask.to(self.device),
                                 batch.labels.to(self.device), advantages.to(self.device),
                                 sequence_count=batch.sequence_count)
            if hp.num_iterations > 1:
                batch.old_logps = self._policy_token_logps(self.model, batch)[0]
            if hp.kl_coef > 0:
                batch.ref_logps = self._policy_token_logps(self._reference[0], batch)[0]
            out.append(batch)
            merge_sums(sums, rollout_sums(rewards, completions, parts, tok.eos_token_id))
            if i == 0:
                self._samples = list(zip(prompts, texts, total))[:k * 2]
        return StepBatch(out), sums

    @torch.no_grad()
    def _grpo_eval(self, batch: PromptBatch):
        """Validation of an RL policy: greedy replies to the prompts, scored by the rewards
        (val/reward, val/reward/<function>: with the correctness function, exact-match accuracy)."""
        hp = self.hparams
        groups = sample_token_ids(self.model, self.tokenizer, batch.prompt_ids, max_new_tokens=hp.max_new_tokens,
                                  temperature=0.0)
        completions = [g[0] for g in groups]
        texts = [t.strip() for t in self.tokenizer.batch_decode(completions, skip_special_tokens=True)]
        lengths = [len(c) for c in completions]
        total, parts = self.rewards.score(batch.prompts, texts, batch.references, lengths, hp.max_new_tokens)
        sums = {"reward": sum(total), "count": batch.count, "completion_length": sum(lengths)}
        sums.update({f"reward/{name}": sum(values) for name, values in parts.items()})
        return None, sums

    def _log_samples(self) -> None:
        """A few sampled completions of the last rollout, as a Markdown table in TensorBoard."""
        if not self._samples or not self.trainer.is_global_zero or self.logger is None:
            return
        def cell(text):
            return str(text).replace("|", "\\|").replace("\n", "<br>")
        rows = [f"| {cell(p[-1]['content'])} | {cell(c)} | {r:.3f} |" for p, c, r in self._samples]
        self.logger.experiment.add_text("train/completions", "| prompt | completion | reward |\n|---|---|---|\n"
                                        + "\n".join(rows), self.global_step)

    # ----------------------------------------------------------- length penalty
    def _length_penalty(self, batch: SFTBatch, sequences: float, step: int, index: int):
        """Seed eq. 3's term lambda * E[max(0, len(y_hat) - len(y))^2] on this micro-batch, as a
        REINFORCE surrogate (see losses/length_penalty.py). y_hat is sampled from the current
        policy for the prompt of each row: the tokens before its last assistant turn."""
        hp = self.hparams
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
        seed = ((hp.seed * 1_000_003 + step) * 1009 + self.global_rank) * 101 + index
        groups = sample_token_ids(self.model, self.tokenizer, prompt_ids, max_new_tokens=hp.max_new_tokens,
                                  temperature=hp.temperature, top_p=hp.top_p, seed=seed)
        samples = [g[0] for g in groups]
        sampled = rollout_batch(prompt_ids, samples, torch.zeros(len(samples)), self.tokenizer.pad_token_id)
        logps = logprobs.sequence_logps(self.model, sampled.input_ids.to(self.device),
                                        sampled.attention_mask.to(self.device), sampled.labels.to(self.device))  # (B,)
        out = length_penalty_surrogate(logps, torch.tensor([len(c) for c in samples], dtype=torch.float32,
                                                           device=self.device),
                                       torch.tensor(ref_lengths, dtype=torch.float32, device=self.device),
                                       hp.length_penalty)
        return out.surrogate.sum() / max(float(sequences), 1.0), {
            "length_penalty": out.penalties.sum(), "_count/length_penalty": len(samples),
            "sampled_length": float(sum(len(c) for c in samples)), "_count/sampled_length": len(samples)}

    def metrics(self, sums: dict) -> dict:
        """Means over the reduced statistics: each sum divided by its own count ("_count/<name>")
        or else by "count" (tokens or pairs). "_reward_sum"/"_reward_sq" (BT, over 2 rewards a
        pair; grpo, over "_reward_n" completions) give the mean and standard deviation of all
        rewards; "_min/<name>" and "_max/<name>" pass through as <name>_min and <name>_max;
        sft_verifier's loss is loss_verify + lambda * loss_correct, each a token mean over its own rows."""
        count = max(sums["count"], 1.0)
        means = {name: value / max(sums.get(f"_count/{name}", count), 1.0) for name, value in sums.items()
                 if name != "count" and not name.startswith("_")}
        if "loss_verify" in means:
            means["loss"] = means["loss_verify"] + self.hparams.lambda_ * means["loss_correct"]
        if "_reward_sq" in sums:
            n = max(sums.get("_reward_n", 2 * count), 1.0)    # bt: 2 rewards a pair; grpo: completions
            mean = sums["_reward_sum"] / n
            means["reward_mean" if "_reward_n" not in sums else "reward"] = mean
            means["reward_std"] = math.sqrt(max(sums["_reward_sq"] / n - mean ** 2, 0.0))
        for name, value in sums.items():
            if name.startswith(("_min/", "_max/")):
                means[f"{name[5:]}_{name[1:4]}"] = value      # "_max/completion_length" -> completion_length_max
        return means

    # ----------------------------------------------------------------- training
    def training_step(self, batch: StepBatch, batch_idx: int):
        rollout = None
        if isinstance(batch.micro_batches[0], PromptBatch):      # grpo: sample and score first
            batch, rollout = self._rollout(batch, batch_idx)
        iterations = self.hparams.num_iterations if rollout is not None else 1
        sums, grad_norm = {}, None
        for _ in range(iterations):          # several updates on one rollout: the clipped ratio at work
            reduced, grad_norm = self._update(batch, batch_idx)
            for k, v in reduced.items():
                sums[k] = sums.get(k, 0.0) + v
        if rollout is not None:
            sums.update(self._reduce_rollout(rollout))
            if self.global_step % self.hparams.log_every_n_steps < iterations:
                self._log_samples()
        means = self.metrics(sums)
        # Lightning repeats a metric's last value at every later logging step; one measured
        # only on some steps (the length penalty's samples) goes to the event file directly.
        for name in ("length_penalty", "sampled_length"):
            if name in means and self.trainer.is_global_zero and self.logger is not None:
                self.logger.experiment.add_scalar(f"train/{name}", means[name], self.global_step - 1)
            means.pop(name, None)
        for name, value in means.items():
            self._log(f"train/{name}", value, prog_bar=name in ("loss", "reward"))
        if grad_norm is not None:
            self._log("train/grad_norm", grad_norm)     # before clipping
        self._log("train/nonfinite_steps", self._nonfinite_total)
        unit = {SFTBatch: "tokens", RolloutBatch: "completion_tokens"}.get(type(batch.micro_batches[0]), "pairs")
        self._log(f"train/{unit}", sums["count"] / iterations)
        self._log("lr", self.lr_schedulers().get_last_lr()[0])

    def _update(self, batch: StepBatch, batch_idx: int) -> tuple[dict, torch.Tensor | None]:
        """forward -> loss -> backward for every micro-batch of the step, then one optimizer
        step (or a skipped one, when the loss or gradient is not finite on any worker).
        Returns the step's statistics summed over workers and the gradient norm."""
        opt, sched = self.optimizers(), self.lr_schedulers()
        step_count = self._reduce_sum(torch.as_tensor(batch.count, dtype=torch.float32, device=self.device))
        # DDP averages gradients over workers, so scale each worker's share back up.
        normalizer = step_count / self.trainer.world_size
        penalize = (self.hparams.training_type == "sft" and self.hparams.length_penalty > 0
                    and self.global_step % self.hparams.length_penalty_every == 0)
        if penalize:
            rows = sum(mb.input_ids.shape[0] for mb in batch.micro_batches)
            sequences = self._reduce_sum(torch.as_tensor(rows, dtype=torch.float32, device=self.device))
            sequences = sequences / self.trainer.world_size
        totals = {}
        for i, mb in enumerate(batch.micro_batches):
            loss, sums = self.compute(mb, normalizer)
            if penalize:
                surrogate, extra = self._length_penalty(mb, sequences, self.global_step, i)
                loss = loss + surrogate
                sums = {**sums, **extra}
            self.manual_backward(loss)
            for k, v in sums.items():
                totals[k] = totals.get(k, 0.0) + torch.as_tensor(v, dtype=torch.float32).detach()
        # fp16 loss scaling meets inf gradients by design and its GradScaler skips those steps
        # itself; everywhere else a non-finite gradient norm means the step would ruin the weights.
        grad_norm = None
        if self.hparams.precision != "16-mixed":
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=self.device)
            totals["_nonfinite_grad"] = (~torch.isfinite(grad_norm)).float()
        # Reduced before the update, so every worker sees the same sums and skips together.
        reduced = self._reduce_sums(totals)
        if reduced.get("_nonfinite_grad", 0) > 0 or not all(math.isfinite(v) for v in reduced.values()):
            self._skip_nonfinite_step(opt, batch_idx)      # its NaNs are still logged, as they were
        else:
            self._nonfinite_streak = 0
            if self.hparams.gradient_clip_val:
                self.clip_gradients(opt, gradient_clip_val=self.hparams.gradient_clip_val,
                                    gradient_clip_algorithm="norm")
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
        return reduced, grad_norm

    def _reduce_rollout(self, sums: dict) -> dict:
        """Rollout statistics over workers: sums added, "_min/" and "_max/" entries by min and max."""
        extremes = {k: sums.pop(k) for k in list(sums) if k.startswith(("_min/", "_max/"))}
        reduced = self._reduce_sums(sums)
        for k, v in extremes.items():
            t = torch.tensor(float(v), device=self.device)
            if self.trainer.world_size > 1:
                op = torch.distributed.ReduceOp.MIN if k.startswith("_min/") else torch.distributed.ReduceOp.MAX
                torch.distributed.all_reduce(t, op=op)
            reduced[k] = t.item()
        return reduced

    def _skip_nonfinite_step(self, opt, batch_idx: int) -> None:
        """Drop the step's gradients (no update, no scheduler step), count it, and stop the run
        after --max-nonfinite-steps in a row; checkpoints already written stay as they are."""
        opt.zero_grad(set_to_none=True)
        self._nonfinite_streak += 1
        self._nonfinite_total += 1
        where = f"optimizer step {self.global_step} (batch {batch_idx} of epoch {self.current_epoch})"
        if self._nonfinite_streak >= self.hparams.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"The loss or gradient was not finite for {self._nonfinite_streak} steps in a row, the last at {where}; "
                f"stopped, and the checkpoints written before are kept (--max-nonfinite-steps "
                f"{self.hparams.max_nonfinite_steps}).")
        log.warning("non-finite loss or gradient at %s: step skipped (%d in a row)", where, self._nonfinite_streak)

    def configure_optimizers(self):
        hp = self.hparams
        opt = adamw(self.model.parameters(), hp.lr, hp.weight_decay, fused=hp.strategy != "fsdp")
        total = max(1, int(self.trainer.estimated_stepping_batches))
        if self.hparams.training_type == "grpo" and self.trainer.max_steps == -1:
            total *= self.hparams.num_iterations        # --num-iterations updates on every rollout batch
        warmup = max(1, int(round(hp.warmup_ratio * total)))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: warmup_linear_decay(step, total, warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # --------------------------------------------------------- validation / test
    def _eval_step(self, batch) -> None:
        _, sums = self.compute(batch)
        if self._eval_sums is None:
            self._eval_sums = {k: 0.0 for k in sums}
        for k, v in sums.items():
            self._eval_sums[k] += torch.as_tensor(v, dtype=torch.float32).detach()

    def _eval_epoch_end(self, stage: str) -> dict:
        sums = self._eval_sums or {"loss": 0.0, "count": 0.0}
        self._eval_sums = None
        reduced = self._reduce_sums(sums)
        metrics = {}
        if reduced["count"] > 0:
            metrics = {f"{stage}/{k}": v for k, v in self.metrics(reduced).items()}
            if self.hparams.training_type == "sft":
                metrics[f"{stage}/perplexity"] = math.exp(min(metrics[f"{stage}/loss"], 50.0))
        edit = self._edit_distance(stage)
        if edit is not None:
            metrics[f"{stage}/edit_distance"], metrics[f"{stage}/reply_length"] = edit
        if self.win_rate is not None:
            metrics[f"{stage}/win_rate"] = self._win_rate(stage)
        if self.verifier_rows:
            metrics.update({f"{stage}/{k}": v for k, v in self._verifier_metrics().items()})
        for name, value in metrics.items():
            self._log(name, value, prog_bar=name.endswith("/loss"), sync_dist=False)
        return metrics

    def _edit_distance(self, stage: str) -> tuple[float, float] | None:
        """Mean Levenshtein distance of greedy replies to the references, and the replies' mean
        length in tokens (the end-of-turn token included), over all workers."""
        if not self.val_prompts or self.tokenizer is None:
            return None
        rank, world = self.global_rank, self.trainer.world_size
        mine = self.val_prompts[rank::world]      # each worker scores its own share
        distance = tokens = 0.0
        if mine:
            replies = [g[0] for g in generate_completions(self.model, self.tokenizer, [p for p, _ in mine],
                                                          max_new_tokens=self.hparams.val_max_new_tokens,
                                                          progress=f"{stage} replies")]
            distance = float(sum(Levenshtein.distance(r.text, ref) for r, (_, ref) in zip(replies, mine)))
            tokens = float(sum(r.completion_tokens for r in replies))
        summed = self._reduce_sum(torch.tensor([distance, tokens, float(len(mine))], device=self.device))
        n = max(1.0, summed[2].item())
        return summed[0].item() / n, summed[1].item() / n

    def _win_rate(self, stage: str) -> float:
        """Policy vs reference replies on this worker's share of the prompts, judged; the
        records of all workers are written to <run>/win_rate/<stage>-step-<N>.jsonl."""
        from judges import judge_pairs, summarize
        setup = self.win_rate
        rank, world = self.global_rank, self.trainer.world_size
        mine = list(range(rank, len(setup.prompts), world))
        prompts, references = [setup.prompts[i] for i in mine], [setup.references[i] for i in mine]
        if self._reference_replies is None:
            # Same prompts, batches, settings and seed as the policy's replies below.
            # The starting model renders prompts with the run's --chat-template; another keeps its own.
            template = self.hparams.get("chat_template") if setup.reference_model == self.hparams.model_name else None
            ref_model, ref_tokenizer = load_trained(setup.reference_model, chat_template=template,
                                                    trust_remote_code=self.hparams.trust_remote_code)
            self._reference_replies = generate_replies(ref_model.to(self.device), ref_tokenizer, prompts,
                                                       progress=f"{stage} win rate: reference replies",
                                                       **setup.generation)
            del ref_model
        if hasattr(setup.judge, "to"):
            setup.judge.to(self.device)
        replies = generate_replies(self.model, self.tokenizer, prompts, progress=f"{stage} win rate: replies",
                                   **setup.generation)
        records = judge_pairs(setup.judge, prompts, references, replies, self._reference_replies)
        for index, record in zip(mine, records):
            record["index"] = index
        if world > 1:
            gathered = [None] * world
            torch.distributed.all_gather_object(gathered, records)
            records = sorted((r for part in gathered for r in part), key=lambda r: r["index"])
        if self.trainer.is_global_zero:
            import storage
            path = storage.join(setup.out_dir, f"{stage}-step-{self.global_step:07d}.jsonl")
            storage.write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records))
        return summarize(records).rate

    def _verifier_metrics(self) -> dict:
        """GenRM validation on this worker's share of the verify rows, reduced over workers
        (extension/verifier.py: verifier_score and verifier_accuracy, --verifier-k rationales a row)."""
        from extension.verifier import verifier_metrics, verifier_metrics_sums
        rank, world = self.global_rank, self.trainer.world_size
        sums = verifier_metrics_sums(self.model, self.tokenizer, self.verifier_rows,
                                     range(rank, len(self.verifier_rows), world), self.hparams.verifier_k,
                                     max_new_tokens=self.hparams.val_max_new_tokens, seed=self.hparams.seed)
        return verifier_metrics(self._reduce_sum(torch.tensor(sums, device=self.device)).tolist())

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self._eval_sums = None      # sanity steps only check that validation runs
            return
        self._eval_epoch_end("val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self.test_metrics = self._eval_epoch_end("test")
