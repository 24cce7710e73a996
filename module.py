"""One LightningModule for every training type.

    training_step: for each micro-batch of the step: forward -> loss fn (from the registry)
                   -> backward; then clip, optimizer step, scheduler step, log.
    SFT batches: token log-probs (logprobs.py: the LM head only at supervised positions, in
    chunks; packed rows keep attention within each sequence) -> masked cross-entropy.
    Preference batches (DPO): chosen
    and rejected in one forward -> summed completion log-probs -> DPO loss against the
    reference log-probs (cached with the data, or a live frozen reference). Preference
    batches (bt): chosen and rejected in one forward of the reward model -> one reward per
    sequence (reward_model.sequence_rewards) -> Bradley-Terry loss.

Optimization is manual so that a gradient-accumulation window is one DataLoader item
(a `StepBatch`): the loss of each micro-batch is divided by the supervised tokens (SFT) or
pairs (DPO) of the whole step, summed over DDP workers, which makes accumulation and data parallelism give
exactly the update of one large batch (see losses/sft.py).

Validation logs val/loss (token-mean over the whole validation set), val/perplexity =
exp(val/loss), and val/edit_distance: the mean character Levenshtein distance between the
greedy reply and the reference reply on the first --val-generations validation prompts,
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

from collate_functions import PreferenceBatch, SFTBatch, StepBatch
from generation import generate_replies
import logprobs
from losses import LOSSES
from losses.dpo import IGNORE_INDEX
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
    """

    def __init__(self, config: dict, model=None, tokenizer=None,
                 val_prompts: list[tuple[list[dict], str]] | None = None, reference=None,
                 win_rate: WinRateSetup | None = None, verifier_rows: list[tuple[str, str]] | None = None):
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

    def on_fit_start(self) -> None:
        for ref in self._reference:
            ref.to(self.device)

    # ------------------------------------------------- forward -> loss -> sums
    def compute(self, batch, normalizer=None) -> tuple[torch.Tensor, dict]:
        """Loss of one micro-batch (its share of the step's mean) and additive statistics."""
        if self.hparams.training_type == "bt":
            return self._bt(batch, normalizer)
        if isinstance(batch, PreferenceBatch):
            return self._dpo(batch, normalizer)
        if self.hparams.training_type == "sft_verifier":
            return self._sft_verifier(batch, normalizer)
        return self._sft(batch, normalizer)

    def _token_nll(self, batch: SFTBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T-1) NLL of each supervised next token (0 elsewhere) and the (B, T-1) bool mask."""
        attention_mask = batch.attention_mask
        if batch.position_ids is not None:       # packed rows: the positions say where each sequence starts
            attention_mask = None
            if not logprobs.supports_packing(self.model):
                raise RuntimeError(f"{type(self.model).__name__} does not keep attention within packed "
                                   f"sequences (its mask ignores position_ids); train with --no-packing.")
        logps = logprobs.token_logps(self.model, batch.input_ids, attention_mask, batch.labels,
                                     batch.position_ids)
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
            raise RuntimeError("DPO needs reference log-probs: precompute them or pass a reference model")
        return logprobs.sequence_logps(self._reference[0], batch.input_ids, batch.attention_mask, batch.labels)

    def _dpo(self, batch: PreferenceBatch, normalizer=None):
        logps = logprobs.sequence_logps(self.model, batch.input_ids, batch.attention_mask, batch.labels)   # (2B,)
        ref = self.reference_logps(batch)
        B = batch.count
        chosen_tokens = (batch.labels[:B, 1:] != IGNORE_INDEX).sum(dim=-1)                   # (B,)
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
        rewards = sequence_rewards(self.model, batch.input_ids, batch.attention_mask)     # (2B,)
        B = batch.count
        out = self.loss_fn(rewards[:B], rewards[B:], self.hparams.center_rewards_coefficient)
        denom = torch.as_tensor(B if normalizer is None else normalizer, dtype=torch.float32)
        r = rewards.detach()
        sums = {"loss": out.losses.detach().sum(), "count": B, "accuracy": (out.margins > 0).sum(),
                "margin": out.margins.sum(), "rewards/chosen": r[:B].sum(), "rewards/rejected": r[B:].sum(),
                "_reward_sum": r.sum(), "_reward_sq": (r ** 2).sum()}
        return out.losses.sum() / denom.clamp(min=1), sums

    def metrics(self, sums: dict) -> dict:
        """Means over the reduced statistics: each sum divided by its own count ("_count/<name>")
        or else by "count" (tokens or pairs). "_reward_sum"/"_reward_sq" (BT, over 2 rewards a
        pair) give the mean and standard deviation of all rewards; sft_verifier's loss is
        loss_verify + lambda * loss_correct, each a token mean over its own rows."""
        count = max(sums["count"], 1.0)
        means = {name: value / max(sums.get(f"_count/{name}", count), 1.0) for name, value in sums.items()
                 if name != "count" and not name.startswith("_")}
        if "loss_verify" in means:
            means["loss"] = means["loss_verify"] + self.hparams.lambda_ * means["loss_correct"]
        if "_reward_sq" in sums:
            mean = sums["_reward_sum"] / (2 * count)
            means["reward_mean"] = mean
            means["reward_std"] = math.sqrt(max(sums["_reward_sq"] / (2 * count) - mean ** 2, 0.0))
        return means

    # ----------------------------------------------------------------- training
    def training_step(self, batch: StepBatch, batch_idx: int):
        opt, sched = self.optimizers(), self.lr_schedulers()
        step_count = self._reduce_sum(torch.as_tensor(batch.count, dtype=torch.float32, device=self.device))
        # DDP averages gradients over workers, so scale each worker's share back up.
        normalizer = step_count / self.trainer.world_size
        totals = {}
        for mb in batch.micro_batches:
            loss, sums = self.compute(mb, normalizer)
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
            self._skip_nonfinite_step(opt, batch_idx)      # its NaNs are still logged below, as they were
        else:
            self._nonfinite_streak = 0
            if self.hparams.gradient_clip_val:
                self.clip_gradients(opt, gradient_clip_val=self.hparams.gradient_clip_val,
                                    gradient_clip_algorithm="norm")
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
        for name, value in self.metrics(reduced).items():
            self._log(f"train/{name}", value, prog_bar=name == "loss")
        if grad_norm is not None:
            self._log("train/grad_norm", grad_norm)     # before clipping
        self._log("train/nonfinite_steps", self._nonfinite_total)
        self._log("train/tokens" if isinstance(batch.micro_batches[0], SFTBatch) else "train/pairs", reduced["count"])
        self._log("lr", sched.get_last_lr()[0])

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
        opt = torch.optim.AdamW(self.model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay,
                                betas=(0.9, 0.999))
        total = max(1, int(self.trainer.estimated_stepping_batches))
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
        edit = self._edit_distance()
        if edit is not None:
            metrics[f"{stage}/edit_distance"] = edit
        if self.win_rate is not None:
            metrics[f"{stage}/win_rate"] = self._win_rate(stage)
        if self.verifier_rows:
            metrics.update({f"{stage}/{k}": v for k, v in self._verifier_metrics().items()})
        for name, value in metrics.items():
            self._log(name, value, prog_bar=name.endswith("/loss"), sync_dist=False)
        return metrics

    def _edit_distance(self) -> float | None:
        """Mean Levenshtein distance of greedy replies to the references, over all workers."""
        if not self.val_prompts or self.tokenizer is None:
            return None
        rank, world = self.global_rank, self.trainer.world_size
        mine = self.val_prompts[rank::world]      # each worker scores its own share
        total = 0.0
        if mine:
            replies = generate_replies(self.model, self.tokenizer, [p for p, _ in mine],
                                       max_new_tokens=self.hparams.val_max_new_tokens)
            total = float(sum(Levenshtein.distance(r, ref) for r, (_, ref) in zip(replies, mine)))
        summed = self._reduce_sum(torch.tensor([total, float(len(mine))], device=self.device))
        return summed[0].item() / max(1.0, summed[1].item())

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
            ref_model, ref_tokenizer = load_trained(setup.reference_model,
                                                    trust_remote_code=self.hparams.trust_remote_code)
            self._reference_replies = generate_replies(ref_model.to(self.device), ref_tokenizer, prompts,
                                                       **setup.generation)
            del ref_model
        if hasattr(setup.judge, "to"):
            setup.judge.to(self.device)
        replies = generate_replies(self.model, self.tokenizer, prompts, **setup.generation)
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
