"""DPO's cached reference log-probs: the starting policy is the reference, so each pair the run
will use is scored with it once, before any update, and the two sums travel with the row.

    precompute_reference_logps(model, loaders, batch_size, pad_id, pack_capacity, run=c,
                               saved=storage.join(run_dir(c), "reference_logps"))

Only what the run reaches is scored: the training pairs that this worker's sampler hands out
within --max-steps (or --max-epochs), so `--max-steps 4` on a 1,440-pair set scores 4 steps'
rows, not 1,440; and the test pairs of Lightning's sanity check, or all of them where the run
reaches a validation pass. Later epochs reuse the values. With `saved`,
the values are also written to the run folder (one JSON file a worker, atomically), so a
resumed run scores only the rows it had not scored before. Progress is shown as a bar.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import math

import torch

import storage
from config import Config

log = logging.getLogger("train")


def reached_indices(sampler, max_steps: int, max_epochs: int) -> list[int]:
    """The training rows (indices into the data set) that `sampler` (collate_functions.ResumableSampler)
    yields to this worker from the run's start until --max-steps optimizer steps or --max-epochs epochs."""
    per_step = sampler.batch_size
    steps_per_epoch = math.ceil(len(sampler) / per_step)
    left = max_epochs * steps_per_epoch if max_steps < 0 else min(max_steps, max_epochs * steps_per_epoch)
    reached, epoch = set(), 0
    while left > 0:
        order = copy.copy(sampler)
        order.epoch = epoch
        # The whole epoch's order, as DistributedSampler draws it from (seed, epoch).
        indices = list(torch.utils.data.DistributedSampler.__iter__(order))
        take = min(left, steps_per_epoch)
        reached.update(indices[:take * per_step])
        left -= take
        epoch += 1
        if len(reached) == len(sampler.dataset):
            break
    return sorted(reached)


def validation_reached(sampler, run: Config) -> bool:
    """Whether a validation pass over the whole test split happens in the run: before training
    (--validate-before-training), every --val-check-interval steps, or at an epoch's end."""
    optim, ev = run.optim, run.eval
    if ev.validate_before_training:
        return True
    steps_per_epoch = math.ceil(len(sampler) / sampler.batch_size)
    total = optim.max_epochs * steps_per_epoch
    if optim.max_steps > 0:
        total = min(total, optim.max_steps)
    if ev.val_check_interval:
        return ev.val_check_interval <= total
    return total >= steps_per_epoch * ev.check_val_every_n_epoch


def precompute_reference_logps(model, loaders: dict, batch_size: int, pad_id: int, pack_capacity: int | None = None,
                               run: Config | None = None, saved: str | None = None, rank: int = 0) -> None:
    """Store ref_chosen_logps / ref_rejected_logps in every row the run will use (with `run`, the
    resolved config: the training rows reached, and the test rows of Lightning's sanity check or,
    where a validation pass is reached, all; without it, every row). Rows laid out as the
    validation loader lays them out (same chunks, packed or not), so at step 0 their log-probs
    equal the policy's there to the bit. A batch holding a row that was not scored is scored with
    a live reference instead (module.py), so a wrong guess here costs time, never correctness."""
    from collate_functions import concatenate_pairs
    from generation import progress_bar
    from logprobs import preference_logps

    work = {}
    for split, loader in loaders.items():
        rows = loader.dataset
        if run is None:
            work[split] = list(range(len(rows)))
        elif split == "train":
            work[split] = reached_indices(loader.sampler, run.optim.max_steps, run.optim.max_epochs)
        elif "train" in loaders and not validation_reached(loaders["train"].sampler, run):
            work[split] = list(range(min(len(rows), run.eval.num_sanity_val_steps * batch_size)))
        else:
            work[split] = list(range(len(rows)))
    path = f"{saved}/rank-{rank}.json" if saved else None
    key = _key(model, loaders, batch_size, pack_capacity) if path else None
    done = _read(path, key) if path else {}
    for split, indices in work.items():
        rows = loaders[split].dataset
        for i in indices:
            if str(i) in done.get(split, {}):
                rows[i]["ref_chosen_logps"], rows[i]["ref_rejected_logps"] = done[split][str(i)]
        work[split] = [i for i in indices if "ref_chosen_logps" not in rows[i]]
    total = sum(len(v) for v in work.values())
    log.info("reference log-probs: %d pairs to score (%s)%s", total,
             ", ".join(f"{s} {len(v)}" for s, v in work.items()),
             f", {sum(len(v) for v in done.values())} read from {path}" if done else "")
    if total:
        was_training = model.training
        model.eval()
        bar = progress_bar(desc="reference log-probs", total=total, unit="pair")
        with torch.no_grad():
            for split, indices in work.items():
                rows = loaders[split].dataset
                for start in range(0, len(indices), batch_size):
                    chunk = [rows[i] for i in indices[start:start + batch_size]]
                    pairs = concatenate_pairs(chunk, pad_id, pack_capacity=pack_capacity)
                    logps = preference_logps(model, pairs).tolist()
                    for j, row in enumerate(chunk):
                        row["ref_chosen_logps"], row["ref_rejected_logps"] = logps[j], logps[len(chunk) + j]
                    bar.update(len(chunk))
        bar.close()
        model.train(was_training)
    if path and total:
        values = {split: _scored(loader.dataset) for split, loader in loaders.items()}
        storage.write_text_atomic(path, json.dumps({"key": key, "values": values}))


def _scored(rows) -> dict:
    """{row index: [chosen, rejected] reference log-probs} of the rows that have them."""
    return {str(i): [row["ref_chosen_logps"], row["ref_rejected_logps"]]
            for i, row in enumerate(rows) if "ref_chosen_logps" in row}


def _key(model, loaders: dict, batch_size: int, pack_capacity: int | None) -> str:
    """What the saved values depend on: the starting weights (a cheap digest), the rows and their layout."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.named_parameters():
            digest.update(name.encode())
            digest.update(f"{float(p.double().sum()):.17g}".encode())
    for split, loader in sorted(loaders.items()):
        for row in loader.dataset:
            digest.update(json.dumps([split, row.get("chosen_input_ids"), row.get("rejected_input_ids"),
                                      row.get("chosen_labels"), row.get("rejected_labels")]).encode())
    digest.update(json.dumps([batch_size, pack_capacity]).encode())
    return digest.hexdigest()


def _read(path: str, key: str) -> dict:
    if not storage.exists(path):
        return {}
    try:
        saved = json.loads(storage.read_text(path))
    except (OSError, ValueError):
        return {}       # written atomically, so only a foreign file lands here: score again
    if saved.get("key") != key:
        log.warning("%s was computed for another model, data or layout; scoring again", path)
        return {}
    return saved.get("values", {})
