"""Evaluate one or more models on a data set's prompts and references: one table, and JSON.

    python evaluate.py --models embedded/model runs/sft-demo runs/dpo-demo --num-prompts 64 \\
        --reference-model runs/sft-demo --judge correctness --output eval.json
    python evaluate.py --models runs/genrm-demo --verifier-rows 32       # adds the GenRM verifier score

Rows: models (Hugging Face folders, Hub names, train.py checkpoints or run folders, local or
s3://); columns: metrics over the first --num-prompts (prompt, reference reply) pairs of the
data set's --split (default: the bundled SFT data's test split; preference data sets give
their chosen reply as the reference):
  loss, ppl       token-mean cross-entropy of the reference reply given its prompt (reply tokens
                  and its end-of-turn token only), and perplexity = exp(loss)
  bleu1/2/4       corpus BLEU of the greedy replies against the references (sacrebleu, with
                  max n-gram order 1, 2 and 4; 0-100)
  edit            mean character Levenshtein distance, reply to reference (rapidfuzz)
  win_rate        against --reference-model, scored by --judge (judges.py), ties half; given both
  verifier        for GenRM verifiers (models trained with --training-type sft_verifier, found
                  from their run's config or exported model card): mean score on verify rows
                  labelled Yes minus on those labelled No (the seed's verifier score), with
                  --verifier-k rationales per row, on the first --verifier-rows verify rows of
                  --verifier-dataset (default the bundled problems)
  len             mean reply length in tokens (to end-of-turn)
Replies are greedy unless --temperature says otherwise; every model answers the same
prompts with the same settings and seed. The JSON (--output) holds the table, the settings
and every model's replies; it is written whole, then moved into place.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys

import chat_templates
import storage
from shared_flags import JUDGE_KINDS, MAX_LENGTH, judge_flags, prompt_flags, reply_flags
from text_metrics import bleu, edit_distance, reference_loss

COLUMNS = ("loss", "ppl", "bleu1", "bleu2", "bleu4", "edit", "win_rate", "verifier", "len")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--models", nargs="+", action="extend", required=True,
                   help="models to compare, one table row each (the flag may repeat)")
    prompt_flags(p.add_argument, default_data="the bundled SFT data")
    p.add_argument("--reference-model", default=None, help="win rate against this model (needs --judge)")
    chat_templates.add_flag(p)
    judge_flags(p.add_argument, help=f"win-rate judge (needs --reference-model): {JUDGE_KINDS}")
    p.add_argument("--verifier-dataset", default=None, help="verify rows for the verifier score (default: bundled problems)")
    p.add_argument("--verifier-rows", type=int, default=32, help="verify rows scored per verifier model (0: off)")
    p.add_argument("--verifier-k", type=int, default=4, help="rationales per verify row")
    p.add_argument("--max-length", type=int, default=MAX_LENGTH, help="token limit for the loss and a reward-model judge")
    reply_flags(p.add_argument)
    p.add_argument("--output", default="evaluation.json", help="JSON report (local or s3://)")
    return p


def training_type(name: str) -> str | None:
    """The training type of a train.py run / checkpoint or an upload_to_hub.py export (its
    model card's tags), else None (a Hub model or a folder from elsewhere)."""
    import os

    from models import pretrained_path
    card = os.path.join(pretrained_path(name), "README.md")
    if not os.path.isfile(card):
        return None
    with open(card, encoding="utf-8") as f:
        match = re.search(r"^tags: \[(\w+)\]", f.read(), re.MULTILINE)
    return match.group(1) if match else None


def verifier_rows(name: str, n: int) -> list[tuple[str, str]]:
    """(verification prompt, "Yes"/"No") of the first n verify rows of a data set's test split."""
    from custom_dataset import CustomDataset, prompt_and_reference
    rows = [prompt_and_reference(r) for r in CustomDataset(name, "test", "sft_verifier") if r["task"] == "verify"]
    return [(p[-1]["content"], ref.split()[-1]) for p, ref in rows[:n]]


def format_table(results: dict[str, dict]) -> str:
    """Rows: models; columns: COLUMNS; "-" where a metric was not computed."""
    names = list(results)
    width = max(len("model"), *(len(n) for n in names))
    cells = {n: [("-" if results[n].get(c) is None else f"{results[n][c]:.4g}") for c in COLUMNS] for n in names}
    widths = [max(len(c), *(len(cells[n][j]) for n in names)) for j, c in enumerate(COLUMNS)]
    lines = ["  ".join(["model".ljust(width), *(c.rjust(w) for c, w in zip(COLUMNS, widths))])]
    lines += ["  ".join([n.ljust(width), *(v.rjust(w) for v, w in zip(cells[n], widths))]) for n in names]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from custom_dataset import evaluation_prompts
    from errors import UserError
    from flags import EMBEDDED_DATA
    from generation import generate_completions
    from judges import judge_pairs, make_judge, summarize
    from logs import configure_logging
    from models import load_trained

    args = build_parser().parse_args(argv)
    configure_logging(verbose=False)
    if args.num_prompts < 1 or args.temperature < 0 or not 0 < args.top_p <= 1 or args.verifier_rows < 0:
        print("error: --num-prompts must be at least 1, --verifier-rows not negative, --temperature not negative "
              "and --top-p in (0, 1].", file=sys.stderr)
        return 2
    if len(set(args.models)) != len(args.models):
        print("error: --models names a model twice; each is one row of the table.", file=sys.stderr)
        return 2
    if (args.judge is None) != (args.reference_model is None):
        print("error: win rate needs both --reference-model and --judge.", file=sys.stderr)
        return 2
    device = "cuda" if args.use_gpu else "cpu"
    settings = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                    seed=args.seed, batch_size=args.batch_size)
    dataset = args.dataset_name or str(EMBEDDED_DATA["sft"])
    results, replies = {}, {}
    try:
        pairs = evaluation_prompts(dataset, args.split, args.num_prompts, args.skip_bad_rows)
        prompts, references = [p for p, _ in pairs], [r for _, r in pairs]
        judge = reference_replies = None
        if args.judge:
            judge = make_judge(args.judge, base_url=args.judge_base_url, api_key_env=args.judge_api_key_env,
                               max_length=args.max_length)
            model, tokenizer = load_trained(args.reference_model, chat_template=args.chat_template)
            reference_replies = [o[0].text for o in generate_completions(model.to(device), tokenizer, prompts,
                                                                          **settings)]
            del model
            if hasattr(judge, "to"):
                judge.to(device)
        verify = None
        for name in args.models:
            model, tokenizer = load_trained(name, chat_template=args.chat_template)
            model.to(device)
            outs = [o[0] for o in generate_completions(model, tokenizer, prompts, progress=f"{name}: replies", **settings)]
            texts = [o.text for o in outs]
            loss = reference_loss(model, tokenizer, prompts, references, args.max_length, args.batch_size)
            row = {"loss": loss, "ppl": math.exp(loss), "bleu1": bleu(texts, references, 1),
                   "bleu2": bleu(texts, references, 2), "bleu4": bleu(texts, references, 4),
                   "edit": edit_distance(texts, references), "win_rate": None, "verifier": None,
                   "len": sum(o.completion_tokens for o in outs) / len(outs)}
            if judge is not None:
                row["win_rate"] = summarize(judge_pairs(judge, prompts, references, texts, reference_replies)).rate
            if args.verifier_rows and training_type(name) == "sft_verifier":
                from extension.verifier import verifier_metrics, verifier_metrics_sums
                verify = verify or verifier_rows(args.verifier_dataset or str(EMBEDDED_DATA["sft_verifier"]),
                                                 args.verifier_rows)
                sums = verifier_metrics_sums(model, tokenizer, verify, range(len(verify)), args.verifier_k,
                                             max_new_tokens=args.max_new_tokens, seed=args.seed)
                row["verifier"] = verifier_metrics(sums)["verifier_score"]
            results[name], replies[name] = row, texts
            del model
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = {"dataset": dataset, "split": args.split, "num_prompts": len(prompts), "settings": settings,
              "reference_model": args.reference_model, "judge": args.judge, "metrics": results,
              "replies": replies, "references": references}
    storage.write_text_atomic(args.output, json.dumps(report, indent=1) + "\n")
    print(format_table(results))
    print(f"{len(prompts)} prompts of {dataset} ({args.split}); report in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
