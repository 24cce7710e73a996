"""One LightningModule for every training type.

    training_step: for each micro-batch of the step: forward -> loss fn (from the registry)
                   -> backward; then clip, optimizer step, scheduler step, log.

Optimization is manual so that a gradient-accumulation window is one DataLoader item
(a `StepBatch`): the loss of each micro-batch is divided by the supervised tokens of the
whole step, summed over DDP workers, which makes accumulation and data parallelism give
exactly the update of one large batch (see losses/sft.py).

Validation logs val/loss (token-mean over the whole validation set), val/perplexity =
exp(val/loss), and val/edit_distance: the mean character Levenshtein distance between the
greedy reply and the reference reply on the first --val-generations validation prompts.
"""
from __future__ import annotations

import math
import os

import lightning as L
import torch
from rapidfuzz.distance import Levenshtein

from collate_functions import SFTBatch, StepBatch
from generation import generate_replies
from losses import LOSSES


class ModelLoadError(OSError):
    """The model name or path cannot be loaded; the message is one sentence."""


def _check_local(name_or_path: str) -> None:
    if name_or_path.startswith((".", "/", "~")) and not os.path.isdir(os.path.expanduser(name_or_path)):
        raise ModelLoadError(f"Model folder {name_or_path} does not exist.")


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer
    _check_local(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - hub/file errors come in many types
        raise ModelLoadError(f"Could not load the tokenizer of '{name_or_path}': "
                             f"{_first_line(e)}") from None
    if tokenizer.pad_token_id is None:
        # Padding positions are masked out, so any id works; eos is what most chat models use.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(name_or_path: str, trust_remote_code: bool = False):
    from transformers import AutoModelForCausalLM
    _check_local(name_or_path)
    try:
        return AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch.float32,
                                                    trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"Could not load the model '{name_or_path}': {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def warmup_linear_decay(step: int, total_steps: int, warmup_steps: int) -> float:
    """LR multiplier: linear 0 -> 1 over warmup, then linear 1 -> 0 at total_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


class PostTrainingModule(L.LightningModule):
    """Args:
        config: the resolved flags (a plain dict; saved with every checkpoint).
        model: the policy; loaded from config["model_name"] when None.
        tokenizer: needed for validation generations.
        val_prompts: (prompt messages, reference reply) pairs for val/edit_distance.
    """

    def __init__(self, config: dict, model=None, tokenizer=None,
                 val_prompts: list[tuple[list[dict], str]] | None = None):
        super().__init__()
        self.save_hyperparameters(config)
        self.model = model if model is not None else load_causal_lm(
            config["model_name"], config.get("trust_remote_code", False))
        self.tokenizer = tokenizer
        self.val_prompts = val_prompts or []
        self.loss_fn = LOSSES[config["training_type"]]
        self.automatic_optimization = False
        self._eval_sums = None

    # ------------------------------------------------------------------ helpers
    def _reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over DDP workers (identity in a single process)."""
        if self.trainer.world_size > 1:
            return self.trainer.strategy.reduce(values, reduce_op="sum")
        return values

    def _log(self, name: str, value, **kwargs) -> None:
        value = float(value)
        if self.hparams.roundoff is not None:
            value = round(value, self.hparams.roundoff)
        self.log(name, value, **kwargs)

    def sft_forward(self, batch: SFTBatch, normalizer=None):
        logits = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits  # (B, T, V)
        return self.loss_fn(logits, batch.labels, normalizer)

    # ----------------------------------------------------------------- training
    def training_step(self, batch: StepBatch, batch_idx: int):
        opt, sched = self.optimizers(), self.lr_schedulers()
        local = torch.tensor(float(batch.num_tokens), device=self.device)
        step_tokens = self._reduce_sum(local)
        # DDP averages gradients over workers, so scale each worker's share back up.
        normalizer = step_tokens / self.trainer.world_size
        nll = torch.zeros((), device=self.device)
        for mb in batch.micro_batches:
            out = self.sft_forward(mb, normalizer)
            self.manual_backward(out.loss)
            nll += out.nll_sum
        if self.hparams.gradient_clip_val:
            self.clip_gradients(opt, gradient_clip_val=self.hparams.gradient_clip_val,
                                gradient_clip_algorithm="norm")
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        loss = self._reduce_sum(nll) / step_tokens.clamp(min=1)
        self._log("train/loss", loss, prog_bar=True)
        self._log("train/tokens", step_tokens)
        self._log("lr", sched.get_last_lr()[0])
        return loss

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
    def _eval_step(self, batch: SFTBatch) -> None:
        out = self.sft_forward(batch)
        sums = torch.stack([out.nll_sum.float(), out.num_tokens.float()])
        self._eval_sums = sums if self._eval_sums is None else self._eval_sums + sums

    def _eval_epoch_end(self, stage: str) -> dict:
        sums = self._eval_sums if self._eval_sums is not None else torch.zeros(2, device=self.device)
        self._eval_sums = None
        nll, tokens = self._reduce_sum(sums.to(self.device)).tolist()
        metrics = {}
        if tokens > 0:
            metrics[f"{stage}/loss"] = nll / tokens
            metrics[f"{stage}/perplexity"] = math.exp(min(nll / tokens, 50.0))
        edit = self._edit_distance()
        if edit is not None:
            metrics[f"{stage}/edit_distance"] = edit
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

    def validation_step(self, batch: SFTBatch, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self._eval_sums = None      # sanity steps only check that validation runs
            return
        self._eval_epoch_end("val")

    def test_step(self, batch: SFTBatch, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self.test_metrics = self._eval_epoch_end("test")
