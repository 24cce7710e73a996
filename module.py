"""One LightningModule for every training type: the step, and one adapter a batch type.

    training_step: for each micro-batch of the step: forward -> loss fn (from the registry)
                   -> backward; then clip, optimizer step, scheduler step, log.
    SFT batches: token log-probs (logprobs.py: the LM head only at supervised positions, in
    chunks; packed rows keep attention within each sequence) -> masked cross-entropy.
    Preference batches (DPO): chosen and rejected in one forward -> summed completion log-probs
    -> the --dpo-loss (losses/preference.py) against the reference log-probs (cached with the
    data, or a live frozen reference; none for the reference-free simpo). Preference batches
    (bt): chosen and rejected in one forward of the reward model -> one reward per sequence
    (reward_model.sequence_rewards) -> Bradley-Terry loss. orpo's pairs and kto's unpaired
    rows: preference_steps.py. Prompt batches (grpo): a rollout
    first (rollouts.py: k sampled completions a prompt -> rewards -> group advantages), then
    the completions' token log-probs -> clipped policy-gradient loss.

Optimization is manual so that a gradient-accumulation window is one DataLoader item (a
`StepBatch`): the loss of each micro-batch is divided by the supervised tokens (SFT) or pairs
(DPO) of the whole step, summed over DDP workers, which makes accumulation and data
parallelism give exactly the update of one large batch (see losses/sft.py).

Validation logs val/loss (token-mean over the whole validation set), val/perplexity and the
metrics that generate text (val_generation.py). train_state.py: what checkpoints add for a resume.
"""
from __future__ import annotations

import contextlib
import logging
import math

import lightning as L
import torch

import adapters
import preference_steps
import rollouts
import train_state
from collate_functions import KTOBatch, PreferenceBatch, PromptBatch, RolloutBatch, SFTBatch, StepBatch
from compilation import compile_for_training
from config import Config
from errors import ConfigError, UserError
from logprobs import batch_attention_mask, preference_logps, token_logps
from losses import LOSSES
from losses.labels import IGNORE_INDEX
from losses.preference import PREFERENCE_LOSSES, PairLogps
from models import disable_dropout, load_model
from reward_model import sequence_rewards
from val_generation import WinRateSetup, generation_metrics

log = logging.getLogger("train")


class NonFiniteLossError(UserError, RuntimeError):
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
    which with a 152k-token vocabulary was ~10% of a reward-model step (bench/README.md).
    Left unfused under FSDP, whose sharded parameters it is not checked with here."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999), fused=fused)


class PostTrainingModule(L.LightningModule):
    """Args:
        config: the resolved config (config.Config; saved flat with every checkpoint).
        model: the policy; loaded from --model-name when None.
        tokenizer: needed for validation generations.
        val_prompts: (prompt messages, reference reply) pairs for val/edit_distance.
        reference: the frozen reference model for DPO with a live reference pass and grpo's KL (None
            when reference log-probs are precomputed and travel with the data, and under --lora-r,
            where the reference is the policy with its adapters disabled).
        win_rate: set up --calculate-win-rate (val/win_rate at every validation).
        verifier_rows: sft_verifier's (verification prompt, "Yes"/"No") rows scored at every
            validation (val/verifier_score, val/verifier_accuracy).
        rewards: grpo's rewards.Rewards (reward functions and/or a reward model).
    """

    def __init__(self, config: Config, model=None, tokenizer=None,
                 val_prompts: list[tuple[list[dict], str]] | None = None, reference=None,
                 win_rate: WinRateSetup | None = None, verifier_rows: list[tuple[str, str]] | None = None,
                 rewards=None, metadata: dict | None = None):
        super().__init__()
        self.config = config
        self.save_hyperparameters(config.flat())    # saved flat with every checkpoint (config.py)
        m = config.model
        self.model = model if model is not None else load_model(
            config.run.training_type, m.model_name, tokenizer, m.trust_remote_code, config.lora.load_in_4bit,
            config.bt.reward_pooling)
        if config.lora.lora_r:      # train.py adapts its model first (DPO's precomputed reference needs it)
            adapters.add_adapters(self.model, config.lora, config.run.training_type)
        # from_pretrained returns a model in eval mode and Lightning does not switch it back (it
        # only warns, and logs.py quiets Lightning's warnings): without this every run trained
        # with dropout off and transformers' activation checkpointing (gated on .training) inactive.
        self.model.train()
        if m.disable_dropout:
            disable_dropout(self.model)
        if m.activation_checkpointing:
            if not getattr(self.model, "supports_gradient_checkpointing", False):
                raise ConfigError(f"--activation-checkpointing: {type(self.model).__name__} does not support "
                                  f"activation checkpointing in transformers.")
            # Non-reentrant: correct with inputs that need no gradient and with the no-grad probes of logprobs.py.
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        if m.compile:
            # The decoder (base model) the training forward runs, compiled beside the model, not
            # wrapped into it: state_dict keys and exports stay as uncompiled (compilation.py).
            compile_for_training(self.model)
        self.tokenizer = tokenizer
        self.val_prompts = val_prompts or []
        self.loss_fn = LOSSES[config.run.training_type]
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
    def reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over DDP workers (identity in a single process)."""
        if self.trainer.world_size > 1:
            return self.trainer.strategy.reduce(values, reduce_op="sum")
        return values

    def reduce_sums(self, sums: dict) -> dict:
        """Sum every statistic over DDP workers in one collective."""
        keys = sorted(sums)
        values = self.reduce_sum(torch.stack([torch.as_tensor(sums[k], dtype=torch.float32, device=self.device)
                                               for k in keys]))
        return dict(zip(keys, values.tolist()))

    def _log(self, name: str, value, **kwargs) -> None:
        value = float(value)
        if self.config.run.roundoff is not None:
            value = round(value, self.config.run.roundoff)
        self.log(name, value, **kwargs)

    # ------------------------------------- checkpoints and resume (train_state.py)
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        train_state.save_train_state(self, checkpoint)
        if adapters.is_adapted(self.model):       # the adapters (and a trained head), not the frozen base
            checkpoint["state_dict"] = adapters.keep_trainable(checkpoint["state_dict"], self.model, "model.")

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        train_state.load_train_state(self, checkpoint)
        if adapters.is_adapted(self.model):       # Lightning loads the state_dict strictly after this hook
            checkpoint["state_dict"] = adapters.with_frozen(checkpoint["state_dict"], self.model, "model.",
                                                            self.config.checkpoint.resume_from_checkpoint
                                                            or "restored by Ray")

    def on_train_start(self) -> None:
        train_state.resume_train_start(self)

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
            return rollouts.grpo_eval(self, batch)
        if self.config.run.training_type == "bt":
            return self._bt(batch, normalizer)
        if self.config.run.training_type in preference_steps.STEPS:         # orpo, kto
            return preference_steps.STEPS[self.config.run.training_type](self, batch, normalizer)
        if isinstance(batch, PreferenceBatch):
            return self._dpo(batch, normalizer)
        if self.config.run.training_type == "sft_verifier":
            return self._sft_verifier(batch, normalizer)
        return self._sft(batch, normalizer)

    def _token_nll(self, batch: SFTBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T-1) NLL of each supervised next token (0 elsewhere) and the (B, T-1) bool mask."""
        logps = token_logps(self.model, batch.input_ids, batch_attention_mask(self.model, batch), batch.labels,
                            batch.position_ids)
        return -logps, batch.labels[:, 1:] != IGNORE_INDEX

    def _sft(self, batch: SFTBatch, normalizer=None):
        out = self.loss_fn(*self._token_nll(batch), normalizer)
        return out.loss, {"loss": out.nll_sum, "count": out.num_tokens}

    def _sft_verifier(self, batch: SFTBatch, normalizer=None):
        nll, mask = self._token_nll(batch)
        out = self.loss_fn(nll, mask, batch.generate_mask, self.config.genrm.lambda_, normalizer)
        return out.loss, {"loss_verify": out.nll_verify, "_count/loss_verify": out.tokens_verify,
                          "loss_correct": out.nll_correct, "_count/loss_correct": out.tokens_correct,
                          "count": out.tokens_verify + out.tokens_correct}

    @contextlib.contextmanager
    def reference(self):
        """The reference network (the starting model) for live reference log-probs: under --lora-r the
        policy itself with its adapters disabled (adapters.reference_mode: no second copy in memory),
        else the frozen copy."""
        if adapters.is_adapted(self.model):
            with adapters.reference_mode(self.model) as ref:
                yield ref
            return
        if not self._reference:
            # Precomputed mode, and a row the run was not expected to reach (reference_logps.py):
            # the starting model, loaded now, is the reference.
            from models import load_causal_lm
            log.warning("scoring reference log-probs live for rows that were not precomputed: loading %s",
                        self.config.model.model_name)
            self._reference = [load_causal_lm(self.config.model.model_name, self.config.model.trust_remote_code)
                               .to(self.device).eval().requires_grad_(False)]
        yield self._reference[0]

    @torch.no_grad()
    def reference_logps(self, batch: PreferenceBatch) -> torch.Tensor:
        """(2B,) completion log-probs under the reference: cached with the data, or a live pass."""
        if batch.ref_logps is not None:
            return batch.ref_logps.to(self.device)
        with self.reference() as ref:
            return preference_logps(ref, batch)

    def _dpo(self, batch: PreferenceBatch, normalizer=None):
        d = self.config.dpo
        logps = preference_logps(self.model, batch)                                      # (2B,)
        # A reference-free loss (simpo) has no reference log-probs: none cached, none scored live.
        ref = None if PREFERENCE_LOSSES[d.dpo_loss].reference_free else self.reference_logps(batch)
        B = batch.count
        tokens = batch.per_sequence(batch.labels[:, 1:] != IGNORE_INDEX)                 # (2B,) completion tokens
        ref_chosen, ref_rejected = (None, None) if ref is None else (ref[:B], ref[B:])
        pairs = PairLogps(logps[:B], logps[B:], ref_chosen, ref_rejected, tokens[:B], tokens[B:])
        own = {name: getattr(d, name) for name in PREFERENCE_LOSSES[d.dpo_loss].params}     # e.g. rpo_alpha
        out = self.loss_fn(pairs, d.dpo_loss, d.beta, **own)
        denom = torch.as_tensor(B if normalizer is None else normalizer, dtype=torch.float32)
        chosen, rejected = out.chosen_rewards, out.rejected_rewards
        sums = {"loss": out.losses.detach().sum(), "count": B, "rewards/chosen": chosen.sum(),
                "rewards/rejected": rejected.sum(), "rewards/accuracies": (chosen > rejected).sum(),
                "rewards/margins": (chosen - rejected).sum(), "logps/chosen": logps[:B].detach().sum(),
                "logps/rejected": logps[B:].detach().sum()}
        if ref is not None:
            # log pi(y_w|x) - log pi_ref(y_w|x) on the chosen replies: a sample estimate of KL(pi || pi_ref)
            sums["kl"] = (logps[:B].detach() - ref[:B]).sum()
        return out.losses.sum() / denom.clamp(min=1), sums

    def _bt(self, batch: PreferenceBatch, normalizer=None):
        mask = batch_attention_mask(self.model, batch)
        last = batch.packed_last_tokens() if mask is None else None
        rewards = sequence_rewards(self.model, batch.input_ids, mask, batch.position_ids, last,
                                   reply_mask=batch.labels != IGNORE_INDEX)                        # (2B,)
        B = batch.count
        out = self.loss_fn(rewards[:B], rewards[B:], self.config.bt.center_rewards_coefficient)
        denom = torch.as_tensor(B if normalizer is None else normalizer, dtype=torch.float32)
        r = rewards.detach()
        sums = {"loss": out.losses.detach().sum(), "count": B, "accuracy": (out.margins > 0).sum(),
                "margin": out.margins.sum(), "rewards/chosen": r[:B].sum(), "rewards/rejected": r[B:].sum(),
                "_reward_sum": r.sum(), "_reward_sq": (r ** 2).sum()}
        return out.losses.sum() / denom.clamp(min=1), sums

    # --------------------------------------------------------------------- grpo
    def _grpo(self, batch: RolloutBatch, normalizer=None):
        cfg = self.config
        logps, mask = rollouts.completion_token_logps(self.model, batch)
        old = batch.old_logps if batch.old_logps is not None else logps.detach()
        out = self.loss_fn(logps, old, batch.advantages, mask, batch.ref_logps, cfg.grpo.kl_coef, cfg.grpo.clip_range)
        tokens = mask.sum()
        total = out.per_token.sum()
        denom = torch.as_tensor(batch.count if normalizer is None else normalizer, dtype=torch.float32)
        return total / denom.clamp(min=1), {
            "loss": total.detach(), "count": batch.count, "kl": out.kl.sum(), "_count/kl": tokens,
            "clip_fraction": out.clipped.sum(), "_count/clip_fraction": tokens}

    def metrics(self, sums: dict) -> dict:
        """Means over the reduced statistics: each sum divided by its own count ("_count/<name>")
        or else by "count" (tokens or pairs). "_reward_sum"/"_reward_sq" (BT, over 2 rewards a
        pair; grpo, over "_reward_n" completions) give the mean and standard deviation of all
        rewards; "_min/<name>" and "_max/<name>" pass through as <name>_min and <name>_max;
        sft_verifier's loss is loss_verify + lambda * loss_correct, each a token mean over its own rows.
        "_rows/<name>" counts the rows of one kind a mean is over (kto's desirable rows): with none
        in the sums, the mean is left out rather than reported as 0."""
        count = max(sums["count"], 1.0)
        means = {name: value / max(sums.get(f"_count/{name}", sums.get(f"_rows/{name}", count)), 1.0)
                 for name, value in sums.items()
                 if name != "count" and not name.startswith("_") and sums.get(f"_rows/{name}", 1) > 0}
        if "loss_verify" in means:
            means["loss"] = means["loss_verify"] + self.config.genrm.lambda_ * means["loss_correct"]
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
            batch, rollout = rollouts.rollout(self, batch)
        iterations = self.config.grpo.num_iterations if rollout is not None else 1
        sums, grad_norm = {}, None
        for _ in range(iterations):          # several updates on one rollout: the clipped ratio at work
            reduced, grad_norm = self._update(batch, batch_idx)
            for k, v in reduced.items():
                sums[k] = sums.get(k, 0.0) + v
        if rollout is not None:
            sums.update(rollouts.reduce_rollout(self, rollout))
            if self.global_step % self.config.eval.log_every_n_steps < iterations:
                rollouts.log_samples(self)
        means = self.metrics(sums)
        # Lightning repeats a metric's last value at every later logging step; one measured
        # only on some steps (the length penalty's samples, kto's means over rows of one label) goes
        # to the event file directly.
        by_label = [n[len("_rows/"):] for n in sums if n.startswith("_rows/")]
        for name in ("length_penalty", "sampled_length", *by_label):
            if name in means and self.trainer.is_global_zero and self.logger is not None:
                self.logger.experiment.add_scalar(f"train/{name}", means[name], self.global_step - 1)
            means.pop(name, None)
        for name, value in means.items():
            self._log(f"train/{name}", value, prog_bar=name in ("loss", "reward"))
        if grad_norm is not None:
            self._log("train/grad_norm", grad_norm)     # before clipping
        self._log("train/nonfinite_steps", self._nonfinite_total)
        unit = {SFTBatch: "tokens", RolloutBatch: "completion_tokens",
                KTOBatch: "completions"}.get(type(batch.micro_batches[0]), "pairs")
        self._log(f"train/{unit}", sums["count"] / iterations)
        self._log("lr", self.lr_schedulers().get_last_lr()[0])

    def _update(self, batch: StepBatch, batch_idx: int) -> tuple[dict, torch.Tensor | None]:
        """forward -> loss -> backward for every micro-batch of the step, then one optimizer
        step (or a skipped one, when the loss or gradient is not finite on any worker).
        Returns the step's statistics summed over workers and the gradient norm."""
        opt, sched = self.optimizers(), self.lr_schedulers()
        step_count = self.reduce_sum(torch.as_tensor(batch.count, dtype=torch.float32, device=self.device))
        # DDP averages gradients over workers, so scale each worker's share back up.
        normalizer = step_count / self.trainer.world_size
        sequences = rollouts.length_penalty_rows(self, batch)     # None: no length penalty this step
        totals = {}
        for i, mb in enumerate(batch.micro_batches):
            loss, sums = self.compute(mb, normalizer)
            if sequences is not None:       # sft --length-penalty: a term on replies sampled now
                surrogate, extra = rollouts.length_penalty(self, mb, sequences, self.global_step, i)
                loss, sums = loss + surrogate, {**sums, **extra}
            self.manual_backward(loss)
            for k, v in sums.items():
                totals[k] = totals.get(k, 0.0) + torch.as_tensor(v, dtype=torch.float32).detach()
        # fp16 loss scaling meets inf gradients by design and its GradScaler skips those steps
        # itself; everywhere else a non-finite gradient norm means the step would ruin the weights.
        grad_norm, with_grads = None, []
        if self.config.model.precision != "16-mixed":
            with_grads = [p for p in self.model.parameters() if p.grad is not None]
            grads = [p.grad for p in with_grads]
            grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=self.device)
            totals["_nonfinite_grad"] = (~torch.isfinite(grad_norm)).float()
        # Reduced before the update, so every worker sees the same sums and skips together.
        reduced = self.reduce_sums(totals)
        if reduced.get("_nonfinite_grad", 0) > 0 or not all(math.isfinite(v) for v in reduced.values()):
            self._skip_nonfinite_step(opt, batch_idx)      # its NaNs are still logged, as they were
        else:
            self._nonfinite_streak = 0
            clip = self.config.optim.gradient_clip_val
            if clip and grad_norm is not None and self.config.distributed.strategy != "fsdp":
                # Clipped with the norm measured above, as clip_grad_norm_ would. Lightning's
                # clip_gradients is not used: under bf16-mixed it refuses the fused AdamW
                # (it assumes a loss scaler that unscales inside the step; bf16 has none).
                torch.nn.utils.clip_grads_with_norm_(with_grads, clip, grad_norm)
            elif clip:      # fp16's scaler unscales first; FSDP's norm spans every worker's shard
                self.clip_gradients(opt, gradient_clip_val=clip, gradient_clip_algorithm="norm")
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
        return reduced, grad_norm

    def _skip_nonfinite_step(self, opt, batch_idx: int) -> None:
        """Drop the step's gradients (no update, no scheduler step), count it, and stop the run
        after --max-nonfinite-steps in a row; checkpoints already written stay as they are."""
        opt.zero_grad(set_to_none=True)
        self._nonfinite_streak += 1
        self._nonfinite_total += 1
        where = f"optimizer step {self.global_step} (batch {batch_idx} of epoch {self.current_epoch})"
        if self._nonfinite_streak >= self.config.optim.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"The loss or gradient was not finite for {self._nonfinite_streak} steps in a row, the last at {where}; "
                f"stopped, and the checkpoints written before are kept (--max-nonfinite-steps "
                f"{self.config.optim.max_nonfinite_steps}).")
        log.warning("non-finite loss or gradient at %s: step skipped (%d in a row)", where, self._nonfinite_streak)

    def configure_optimizers(self):
        cfg = self.config
        # The weights that train: all of them, or under --lora-r the adapters (and a reward model's head).
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = adamw(params, cfg.optim.lr, cfg.optim.weight_decay, fused=cfg.distributed.strategy != "fsdp")
        total = max(1, int(self.trainer.estimated_stepping_batches))
        if self.config.run.training_type == "grpo" and self.trainer.max_steps == -1:
            total *= self.config.grpo.num_iterations        # --num-iterations updates on every rollout batch
        warmup = max(1, int(round(cfg.optim.warmup_ratio * total)))
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
        reduced = self.reduce_sums(sums)
        metrics = {}
        if reduced["count"] > 0:
            metrics = {f"{stage}/{k}": v for k, v in self.metrics(reduced).items()}
            if self.config.run.training_type == "sft":
                metrics[f"{stage}/perplexity"] = math.exp(min(metrics[f"{stage}/loss"], 50.0))
        metrics.update(generation_metrics(self, stage))      # val_generation.py
        for name, value in metrics.items():
            self._log(name, value, prog_bar=name.endswith("/loss"), sync_dist=False)
        return metrics

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
