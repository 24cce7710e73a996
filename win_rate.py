"""Win rate of one model against another on a data set's prompts, scored by a judge.

    python win_rate.py --model runs/dpo-demo --reference-model exported/sft-demo --judge correctness
    python win_rate.py --model user/qwen-dpo --reference-model Qwen/Qwen2.5-0.5B-Instruct \\
        --dataset-name HuggingFaceH4/ultrafeedback_binarized --num-prompts 500 \\
        --judge openai:nvidia/llama-3.1-nemotron-70b-reward          # key from $NVIDIA_API_KEY

Both models answer the first --num-prompts prompts of the test split with the chat template's
generation prompt, the same sampling settings and the same seed, stopping at end-of-turn. The
judge scores every reply (judges.py: a reward model folder / Hub name / bt run, openai:MODEL,
correctness, length); a higher score for --model is a win, equal scores a tie (half a win).
Models are Hugging Face folders, Hub names, or train.py checkpoints and run folders (local or
s3://). Prints the rate and writes one JSON record per prompt to --output (written whole, then
moved into place).
"""
from __future__ import annotations

import argparse
import json
import sys

import chat_templates
import storage
from shared_flags import MAX_LENGTH, judge_flags, prompt_flags, reply_flags


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="the policy: HF folder, Hub name, or train.py checkpoint / run")
    p.add_argument("--reference-model", required=True, help="the model to beat, in the same forms")
    chat_templates.add_flag(p)
    judge_flags(p.add_argument, required=True)
    prompt_flags(p.add_argument, default_data="the bundled preference set; preference pairs or conversations")
    reply_flags(p.add_argument)
    p.add_argument("--max-length", type=int, default=MAX_LENGTH, help="token limit of what a reward-model judge reads")
    p.add_argument("--output", default="win_rate.jsonl", help="per-prompt records (JSONL, local or s3://)")
    return p


def main(argv: list[str] | None = None) -> int:
    from custom_dataset import evaluation_prompts
    from errors import UserError
    from flags import EMBEDDED_DATA
    from generation import generate_replies
    from judges import judge_pairs, make_judge, summarize
    from win_stats import bootstrap_interval, outcome_scores
    from logs import configure_logging
    from models import load_trained

    args = build_parser().parse_args(argv)
    configure_logging(verbose=False)
    if args.num_prompts < 1 or args.temperature < 0 or not 0 < args.top_p <= 1:
        print("error: --num-prompts must be at least 1, --temperature not negative and --top-p in (0, 1].",
              file=sys.stderr)
        return 2
    try:
        pairs = evaluation_prompts(args.dataset_name or str(EMBEDDED_DATA["dpo"]), args.split, args.num_prompts,
                                   args.skip_bad_rows)
        prompts, references = [p for p, _ in pairs], [r for _, r in pairs]
        judge = make_judge(args.judge, base_url=args.judge_base_url, api_key_env=args.judge_api_key_env,
                           max_length=args.max_length)
        device = "cuda" if args.use_gpu else "cpu"
        settings = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                        seed=args.seed, batch_size=args.batch_size)
        replies = {}
        for role, name in (("policy", args.model), ("reference", args.reference_model)):
            model, tokenizer = load_trained(name, chat_template=args.chat_template)
            replies[role] = generate_replies(model.to(device), tokenizer, prompts, **settings)
            del model
        if hasattr(judge, "to"):
            judge.to(device)
        records = judge_pairs(judge, prompts, references, replies["policy"], replies["reference"])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    storage.write_text_atomic(args.output, "".join(json.dumps(r) + "\n" for r in records))
    result = summarize(records)
    low, high = bootstrap_interval(outcome_scores(records), seed=args.seed)
    print(f"win rate {result.rate:.4f} [95% bootstrap interval {low:.4f}, {high:.4f}] of {args.model} against "
          f"{args.reference_model} ({result.wins} wins, {result.ties} ties, {result.losses} losses over {result.n} "
          f"prompts; judge {judge.name}); records in {args.output}")
    print(json.dumps({"win_rate": result.rate, "ci95": [low, high], "wins": result.wins, "ties": result.ties,
                      "losses": result.losses,
                      "n": result.n, "judge": judge.name, "model": args.model,
                      "reference_model": args.reference_model}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
