"""TRL's side of bench/run.py for sft, dpo and bt (grpo: bench/grpo_side.py): its trainers on the same
rows, models and settings as ours, and the check that TRL's compute_loss and our module score its first
batch alike (see bench/run.py).
"""
from __future__ import annotations

import os
import time

from bench.workloads import bench_tokenizer, our_config, scratch_folder, tokenized_rows


def trl_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("trl") is not None


def trl_batch_to_ours(workload: str, batch: dict):
    """TRL's collated batch as our batch type, the same tensors."""
    import torch

    from collate_functions import PreferenceBatch, SFTBatch
    if workload == "sft":
        position_ids = batch.get("position_ids")
        attention_mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"]))
        return SFTBatch(batch["input_ids"], attention_mask, batch["labels"], None, position_ids)
    if workload == "dpo":
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
        ref = None
        if "ref_chosen_logps" in batch:
            ref = torch.cat([batch["ref_chosen_logps"], batch["ref_rejected_logps"]]).float()
        return PreferenceBatch(batch["input_ids"], batch["attention_mask"], labels, ref)
    return PreferenceBatch(batch["input_ids"], batch["attention_mask"], batch["input_ids"])


def common_args(args, variant: str) -> dict:
    """The TrainingArguments every TRL configuration shares with our side: --warmup + --steps optimizer steps,
    AdamW at a constant --lr without weight decay, gradient norm clipped to 1.0, --precision, on the CPU;
    trl-best turns TRL's activation checkpointing off."""
    return dict(output_dir=scratch_folder("bench-trl-"), per_device_train_batch_size=args.batch_size,
                max_steps=args.warmup + args.steps, learning_rate=args.lr, lr_scheduler_type="constant",
                warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch", report_to="none",
                save_strategy="no", logging_steps=1, use_cpu=True, dataloader_num_workers=0, seed=args.seed,
                disable_tqdm=True, bf16=args.precision == "bf16-mixed", activation_checkpointing=variant != "trl-best")


def run_trl(workload: str, variant: str, args, folder: str) -> dict:
    import torch
    from datasets import Dataset

    import logprobs
    import trl
    from models import load_causal_lm, load_reward_model
    from module import PostTrainingModule
    tokenizer = bench_tokenizer(args, folder)
    steps = args.warmup + args.steps
    best = variant == "trl-best"
    # Packed rows hold more conversations each: give every configuration enough rows.
    rows = tokenized_rows(workload, tokenizer, args.max_length, steps * args.batch_size * (4 if best and workload == "sft" else 1))
    common = dict(common_args(args, variant), max_length=args.max_length)
    if workload == "sft":
        data = Dataset.from_list([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
        model = load_causal_lm(os.path.join(folder, "lm"))
        trainer = trl.SFTTrainer(model=model, args=trl.SFTConfig(packing=best, padding_free=best, **common),
                                 train_dataset=data, processing_class=tokenizer)
    elif workload == "dpo":
        items = []
        for r in rows:
            start = next(i for i, label in enumerate(r["chosen_labels"]) if label != -100)
            assert r["chosen_input_ids"][:start] == r["rejected_input_ids"][:start]
            items.append({"prompt_ids": r["chosen_input_ids"][:start], "chosen_ids": r["chosen_input_ids"][start:],
                          "rejected_ids": r["rejected_input_ids"][start:]})
        model = load_causal_lm(os.path.join(folder, "lm"))

        class PreTokenizedDPOTrainer(trl.DPOTrainer):
            """TRL 1.16's DPOTrainer always tokenises text columns; these rows are tokenised already."""

            def _prepare_dataset(self, dataset, *args, **kwargs):
                return dataset
        trainer = PreTokenizedDPOTrainer(model=model, args=trl.DPOConfig(beta=0.1, precompute_ref_log_probs=best, **common),
                                 train_dataset=Dataset.from_list(items), processing_class=tokenizer)
    else:
        items = [{"chosen_ids": r["chosen_input_ids"], "rejected_ids": r["rejected_input_ids"]} for r in rows]
        model = load_reward_model(os.path.join(folder, "rm"), tokenizer.pad_token_id)
        trainer = trl.RewardTrainer(model=model, args=trl.RewardConfig(**common),
                                    train_dataset=Dataset.from_list(items), processing_class=tokenizer)
    # The same rows in the same order as our side (TRL's packing reorders its packed rows itself).
    trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(trainer.train_dataset)

    # Loss check: TRL's loss and ours on TRL's first batch, the same tensors and weights.
    batch = next(iter(trainer.get_train_dataloader()))
    config = our_config(workload, args, packing=False)
    ours = PostTrainingModule(config, model=trainer.model, tokenizer=tokenizer)
    our_batch = trl_batch_to_ours(workload, batch)
    reference_error = None
    with torch.no_grad():
        if workload == "dpo" and not best:
            # TRL 1.16 re-loads the reference from the policy's folder, and that copy scores the completions
            # up to ~1e-2 nats a sequence apart from the policy on equal weights (the policy agrees with a
            # float64 log-softmax), so its step-0 loss is not ln 2. Both losses take TRL's reference
            # log-probs; the gap between them and the policy's own is recorded.
            trl_ref = torch.cat(trainer.compute_ref_log_probs(trainer.ref_model, dict(batch))).float()
            policy = logprobs.sequence_logps(trainer.model, our_batch.input_ids, our_batch.attention_mask,
                                             our_batch.labels)
            reference_error = float((trl_ref - policy).abs().max())
            our_batch.ref_logps = trl_ref
        trl_loss = float(trainer.compute_loss(trainer.model, dict(batch)))
        our_loss = float(ours.compute(our_batch)[0])
    del ours

    supervised, total = [], []
    real_compute_loss = trainer.compute_loss

    def counting_compute_loss(model, inputs, *a, **k):
        if model.training:
            if "attention_mask" in inputs:
                total.append(int(inputs["attention_mask"].sum()))
            else:                                    # padding-free: one row, no padding
                total.append(int(inputs["input_ids"].numel()))
            if workload == "sft":
                supervised.append(int((inputs["labels"][:, 1:] != -100).sum()))
            elif workload == "dpo":
                supervised.append(int(inputs["completion_mask"][:, 1:].sum()))
            else:
                supervised.append(0)
        return real_compute_loss(model, inputs, *a, **k)
    trainer.compute_loss = counting_compute_loss

    return {**train_timed(trainer), "supervised": supervised, "total": total,
            "loss_check": {"trl": trl_loss, "ours": our_loss, "trl_reference_max_abs_error": reference_error}}


def train_timed(trainer) -> dict:
    """trainer.train(): each optimizer step's wall and CPU seconds (its on_step_begin hook to its
    on_step_end hook) and the logged losses."""
    from transformers import TrainerCallback
    times, cpu_times, start = [], [], [0.0, 0.0]

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            start[:] = time.perf_counter(), time.process_time()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - start[0])
            cpu_times.append(time.process_time() - start[1])
    trainer.add_callback(Timer())
    trainer.train()
    return {"times": times, "cpu_times": cpu_times,
            "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h]}
