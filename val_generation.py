"""Validation metrics that generate text, beside val/loss (which module.py computes like the step):

    val/edit_distance, val/reply_length   greedy replies to the first --val-generations prompts
                                          against their reference replies (character Levenshtein)
    val/win_rate                          --calculate-win-rate: the policy's replies against a
                                          reference model's, judged (judges.py)
    val/verifier_score, val/verifier_accuracy   sft_verifier: GenRM scoring of the verify rows

Each worker generates for its own share of the prompts (every world-th), and the sums are
reduced over workers. Kept apart from module.py: generation is slow, optional and has nothing
to do with the update; the module calls generation_metrics(module, stage) at the end of every
validation and test epoch.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from rapidfuzz.distance import Levenshtein

from generation import generate_completions, generate_replies
from models import load_trained


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


def generation_metrics(module, stage: str) -> dict:
    """The generating metrics this run asks for, named "<stage>/<metric>"."""
    metrics = {}
    edit = edit_distance(module, stage)
    if edit is not None:
        metrics[f"{stage}/edit_distance"], metrics[f"{stage}/reply_length"] = edit
    if module.win_rate is not None:
        metrics[f"{stage}/win_rate"] = win_rate(module, stage)
    if module.verifier_rows:
        metrics.update({f"{stage}/{k}": v for k, v in verifier_metrics(module).items()})
    return metrics


def edit_distance(module, stage: str) -> tuple[float, float] | None:
    """Mean Levenshtein distance of greedy replies to the references, and the replies' mean
    length in tokens (the end-of-turn token included), over all workers."""
    if not module.val_prompts or module.tokenizer is None:
        return None
    mine = module.val_prompts[module.global_rank::module.trainer.world_size]      # this worker's share
    distance = tokens = 0.0
    if mine:
        replies = [g[0] for g in generate_completions(module.model, module.tokenizer, [p for p, _ in mine],
                                                      max_new_tokens=module.config.eval.val_max_new_tokens,
                                                      progress=f"{stage} replies")]
        distance = float(sum(Levenshtein.distance(r.text, ref) for r, (_, ref) in zip(replies, mine)))
        tokens = float(sum(r.completion_tokens for r in replies))
    summed = module.reduce_sum(torch.tensor([distance, tokens, float(len(mine))], device=module.device))
    n = max(1.0, summed[2].item())
    return summed[0].item() / n, summed[1].item() / n


def win_rate(module, stage: str) -> float:
    """Policy vs reference replies on this worker's share of the prompts, judged; the
    records of all workers are written to <run>/win_rate/<stage>-step-<N>.jsonl. The reference
    model's replies are generated once (module._reference_replies) and reused."""
    from judges import judge_pairs, summarize
    setup, cfg = module.win_rate, module.config
    rank, world = module.global_rank, module.trainer.world_size
    mine = list(range(rank, len(setup.prompts), world))
    prompts, references = [setup.prompts[i] for i in mine], [setup.references[i] for i in mine]
    if module._reference_replies is None:
        # Same prompts, batches, settings and seed as the policy's replies below.
        # The starting model renders prompts with the run's --chat-template; another keeps its own.
        template = cfg.model.chat_template if setup.reference_model == cfg.model.model_name else None
        ref_model, ref_tokenizer = load_trained(setup.reference_model, chat_template=template,
                                                trust_remote_code=cfg.model.trust_remote_code)
        module._reference_replies = generate_replies(ref_model.to(module.device), ref_tokenizer, prompts,
                                                     progress=f"{stage} win rate: reference replies",
                                                     **setup.generation)
        del ref_model
    if hasattr(setup.judge, "to"):
        setup.judge.to(module.device)
    replies = generate_replies(module.model, module.tokenizer, prompts, progress=f"{stage} win rate: replies",
                               **setup.generation)
    records = judge_pairs(setup.judge, prompts, references, replies, module._reference_replies)
    for index, record in zip(mine, records):
        record["index"] = index
    if world > 1:
        gathered = [None] * world
        torch.distributed.all_gather_object(gathered, records)
        records = sorted((r for part in gathered for r in part), key=lambda r: r["index"])
    if module.trainer.is_global_zero:
        import storage
        path = storage.join(setup.out_dir, f"{stage}-step-{module.global_step:07d}.jsonl")
        storage.write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records))
    return summarize(records).rate


def verifier_metrics(module) -> dict:
    """GenRM validation on this worker's share of the verify rows, reduced over workers
    (extension/verifier.py: verifier_score and verifier_accuracy, --verifier-k rationales a row)."""
    from extension import verifier
    rank, world, rows = module.global_rank, module.trainer.world_size, module.verifier_rows
    sums = verifier.verifier_metrics_sums(module.model, module.tokenizer, rows, range(rank, len(rows), world),
                                 module.config.genrm.verifier_k, max_new_tokens=module.config.eval.val_max_new_tokens,
                                 seed=module.config.run.seed)
    return verifier.verifier_metrics(module.reduce_sum(torch.tensor(sums, device=module.device)).tolist())
