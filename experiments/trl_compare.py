"""TRL's trainer on the preference table's data and budget, judged the same way: the check the
issue asks for when one of our stages does not improve its start model (a bug of ours, or a
method that does not help this model here).

    python experiments/trl_compare.py --run runs/real-prefs --method dpo     # after replicate.py --real
    python experiments/trl_compare.py --run runs/real-prefs --method grpo

It reads the finished run's results.json (settings, seed, chosen beta, judge, the start
model's replies and scores), trains TRL 1.16's DPOTrainer or GRPOTrainer from SmolLM2 with our
stage's settings (learning rate, schedule, batch, steps, beta or KL coefficient, clipping, max
length), on the same tokens for DPO (our keep_end tokenisation, fed to TRL pre-tokenised) and
the same prompts and reward model for GRPO; then replies to the evaluation prompts greedily
and is judged against the start model exactly as the table's rows (real_prefs.evaluate's
pieces). Output: <run>/trl_<method>.json (every reply and score) and one table row printed.
TRL is in bench/requirements.txt, not the trainer's requirements.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

if __package__ in (None, ""):      # run as a script: the repository root on the path, as replicate.py does
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import storage  # noqa: E402
from experiments.real_prefs import START, model_outputs, reward_accuracy, win_columns  # noqa: E402


def stage_value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def trl_common(report: dict, stage: str, out: str) -> dict:
    """TrainingArguments of TRL that mirror our stage's train.py command, read with train.py's
    own parser (so its defaults fill what the command does not say)."""
    from flags import build_parser
    c = vars(build_parser().parse_args(report["commands"][stage]))
    # module.py's warm-up: max(1, round(ratio * steps)) steps, then linear decay to 0.
    return dict(output_dir=out, learning_rate=c["lr"], warmup_steps=max(1, round(c["warmup_ratio"] * c["max_steps"])),
                lr_scheduler_type="linear",
                max_steps=c["max_steps"], weight_decay=c["weight_decay"], max_grad_norm=c["gradient_clip_val"],
                optim="adamw_torch", seed=report["seed"], report_to="none", save_strategy="no", logging_steps=1,
                use_cpu=True, bf16=False, dataloader_num_workers=0, disable_tqdm=False)


def train_dpo(report: dict, run: str, out: str) -> None:
    import trl
    from datasets import Dataset

    from custom_dataset import CustomDataset
    from models import load_causal_lm, load_tokenizer, pretrained_path
    from tokenization import tokenize_preference_rows
    s, stage = report["settings"], f"dpo_beta{report['beta']}"
    tokenizer = load_tokenizer(pretrained_path(START))
    pairs = list(CustomDataset(storage.join(run, "data", "policy"), "train", "dpo"))
    rows, _ = tokenize_preference_rows([{**p, "row": i} for i, p in enumerate(pairs)], tokenizer, s["max_length"],
                                       "keep_end")
    items = []
    for r in rows:      # the prompt is the unlabelled head the two sides share
        start = next(i for i, label in enumerate(r["chosen_labels"]) if label != -100)
        items.append({"prompt_ids": r["chosen_input_ids"][:start], "chosen_ids": r["chosen_input_ids"][start:],
                      "rejected_ids": r["rejected_input_ids"][start:]})

    class PreTokenizedDPOTrainer(trl.DPOTrainer):
        """TRL 1.16's DPOTrainer tokenises text columns; these rows are our tokens already."""

        def _prepare_dataset(self, dataset, *args, **kwargs):
            return dataset
    config = trl.DPOConfig(beta=report["beta"], max_length=s["max_length"], per_device_train_batch_size=s["dpo_batch_size"],
                           **trl_common(report, stage, out))
    trainer = PreTokenizedDPOTrainer(model=load_causal_lm(pretrained_path(START)), args=config,
                                     train_dataset=Dataset.from_list(items), processing_class=tokenizer)
    trainer.train()
    trainer.save_model(out)
    tokenizer.save_pretrained(out)


def train_grpo(report: dict, run: str, out: str) -> None:
    import trl
    from datasets import Dataset

    from custom_dataset import CustomDataset
    from judges import RewardModelJudge
    from models import load_causal_lm, load_tokenizer, pretrained_path
    s, args = report["settings"], report["commands"]["grpo"]
    tokenizer = load_tokenizer(pretrained_path(START))
    tokenizer.padding_side = "left"
    prompts = [{"prompt": p["prompt"]} for p in CustomDataset(storage.join(run, "data", "policy"), "train", "dpo")]
    reward = RewardModelJudge(stage_value(args, "--reward-model"), max_length=s["max_length"])

    def reward_model(prompts, completions, **_):
        return reward.score(prompts, [c[-1]["content"] for c in completions])
    config = trl.GRPOConfig(beta=float(stage_value(args, "--kl-coef")), num_generations=s["generations"],
                            per_device_train_batch_size=s["grpo_prompts"] * s["generations"],
                            max_completion_length=s["max_new_tokens"], temperature=1.0, loss_type="dapo",
                            **trl_common(report, "grpo", out))
    trainer = trl.GRPOTrainer(model=load_causal_lm(pretrained_path(START)), reward_funcs=reward_model, args=config,
                              train_dataset=Dataset.from_list(prompts), processing_class=tokenizer)
    trainer.train()
    trainer.save_model(out)
    tokenizer.save_pretrained(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="the output folder of replicate.py --real (holds results.json)")
    p.add_argument("--method", choices=("dpo", "grpo"), required=True)
    a = p.parse_args(argv)
    report_path = storage.join(a.run, "results.json")
    if not storage.exists(report_path):
        print(f"error: {report_path} does not exist: run python experiments/replicate.py --real first.", file=sys.stderr)
        return 2
    report = json.loads(storage.read_text(report_path))
    began = time.perf_counter()
    model_dir = storage.join(a.run, f"trl_{a.method}")
    if not storage.exists(storage.join(model_dir, "config.json")):
        (train_dpo if a.method == "dpo" else train_grpo)(report, a.run, model_dir)
    trained = time.perf_counter() - began
    from custom_dataset import CustomDataset
    from judges import RewardModelJudge
    from text_metrics import bleu
    s, records = report["settings"], report["prompts"]
    pairs = list(CustomDataset(storage.join(a.run, "data", "eval"), "test", "dpo"))
    assert [p["prompt"] for p in pairs] == [r["prompt"] for r in records], "the evaluation prompts changed"
    o = model_outputs(model_dir, f"trl_{a.method}", pairs, s)
    judge = RewardModelJudge(storage.join(a.run, report["judge"]), max_length=s["judge_max_length"])
    scores = judge.score([r["prompt"] for r in records], o["replies"])
    start = [r["judge_scores"]["start"] for r in records]
    row = {"bleu4": bleu(o["replies"], [r["chosen"] for r in records], 4), "ppl": o["ppl"],
           "len": sum(o["lengths"]) / len(records),
           "dpo_reward_acc": reward_accuracy(o["logratios"], [r["logratio"]["start"] for r in records]),
           **win_columns(scores, start, o["lengths"], [r["reply_tokens"]["start"] for r in records], report["seed"]),
           "train_seconds": trained}
    result = {"method": a.method, "row": row, "ours": report["table"][a.method], "date": time.strftime("%Y-%m-%d"),
              "replies": o["replies"], "reply_tokens": o["lengths"], "judge_scores": scores, "logratios": o["logratios"]}
    storage.write_text_atomic(storage.join(a.run, f"trl_{a.method}.json"), json.dumps(result, indent=1) + "\n")
    for name, m in (("ours", report["table"][a.method]), ("trl", row)):
        print(f"{name} {a.method}: win rate {m['win_rate']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}], "
              f"LC {m['lc_win_rate']:.3f}, W/T/L {m['wins']}/{m['ties']}/{m['losses']}, length {m['len']:.1f}, "
              f"DPO reward acc {m['dpo_reward_acc']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
