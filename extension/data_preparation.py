"""Turn the GenRM critiques (Zhang et al. 2024, arXiv:2408.15240) into one chat data set.

    python extension/data_preparation.py --path <genrm-critiques checkout>/critiques --repo user/genrm-gsm8k
    python extension/data_preparation.py --path ../shared/data/genrm-critiques/critiques --output-dir data/genrm

--repo pushes with `DatasetDict.push_to_hub` and the token from HF_TOKEN (private unless
--public); --output-dir writes a `save_to_disk` folder (under a temporary name, then moved
into place, so an interrupted run leaves nothing half-written) that `train.py
--dataset-name` reads as it is. Give one or both.

Input: the folder's `critiques_{correct,incorrect}_solutions_batch_NN[_val].zip` (CoT
verification: the target is a step-by-step critique) and
`rm_{correct,incorrect}_solutions_batch_NN[_val].zip` (direct verification: the target is
" Yes" or " No"). Each zip holds one `.jsonl` of the same name, one
{"inputs", "targets", "question_id", "model_output_id"} object a line. Any subset of the
upstream batches 00..16 works; other files are logged and skipped.

Split: a file whose name ends in `_val` goes to `test`, every other file to `train`
(upstream keeps the validation questions apart from the training ones). Only splits that
get rows are written.

Rows (the smoltalk chat schema that `custom_dataset.py` reads, plus bookkeeping columns):

    {"messages": [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": TARGET}],
     "task": "verify" | "generate", "label": "Yes" | "No" | None, "mode": "cot" | "direct" | None,
     "question_id": int, "source_file": str}

- verify, one per input line: PROMPT is `inputs` without the fixed instruction paragraph
  (from "Q: " on: problem, "A: Let's think step by step.", solution, then the cue "Verification:
  Let's verify step by step." (cot) or "Verification: Is the answer correct (Yes/No)?"
  (direct)); TARGET is `targets` stripped; `label` is the Yes/No that ends it.
- generate, from `correct` files only, one per distinct (question_id, solution) in a split:
  PROMPT is the problem, TARGET the correct solution (GenRM's D_correct next-token term).
  The same solution often sits in both a critiques and an rm file; it is kept once.

Departures from the paper's recipe: the instruction paragraph is dropped (the chat template
takes its place), and a label that disagrees with its file's kind (correct -> Yes,
incorrect -> No) is kept as the critique says and counted in the summary, not dropped.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

# `python <folder>/<script>.py` puts <folder>/ on sys.path, not the repository root that holds storage.py & co.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

# The files' reading lives in the library below (experiments read the rows too); the names the tests
# reach through this script are re-exported.
from extension.critique_files import (COT_CUE, CUES, DIRECT_CUE, PreparationError, SourceFile,  # noqa: E402,F401
                                      classify, find_files, parse_inputs, parse_label, read_records,
                                      verification_prompt)


@dataclass
class Summary:
    """What the summary prints: rows by (split, task, mode), files read, oddities counted."""
    rows: Counter = field(default_factory=Counter)
    files: list = field(default_factory=list)  # (name, split, lines)
    label_disagreements: Counter = field(default_factory=Counter)  # file name -> count
    repeated_solutions: int = 0  # generate pairs seen again (in the same or another file)
    questions_in_both_splits: int = 0


def chat(prompt: str, reply: str) -> list[dict]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]



# ---------------------------------------------------------------------- rows
def rows_of_file(source: SourceFile, seen: set, summary: Summary) -> Iterator[dict]:
    """Verify rows for every line and generate rows for new correct solutions of one file.
    `seen` holds the (split, question_id, solution) keys already emitted, across files."""
    lines = 0
    for number, record in read_records(source):
        lines += 1
        try:
            problem, solution, cue = parse_inputs(record["inputs"])
            if cue != CUES[source.mode]:
                raise ValueError(f"field 'inputs': ends with {cue!r}, but a {source.mode} file's rows "
                                 f"end with {CUES[source.mode]!r}")
            label = parse_label(record["targets"], source.mode)
        except ValueError as e:
            raise PreparationError(f"{source.path}, line {number}, {e}.") from None
        if label != ("Yes" if source.correct else "No"):
            summary.label_disagreements[source.name] += 1
        qid = record["question_id"]
        summary.rows[(source.split, "verify", source.mode)] += 1
        yield {"messages": chat(verification_prompt(record["inputs"]), record["targets"].strip()),
               "task": "verify", "label": label, "mode": source.mode, "question_id": qid,
               "source_file": source.name}
        if not source.correct:
            continue
        key = (source.split, qid, solution)
        if key in seen:
            summary.repeated_solutions += 1
            continue
        seen.add(key)
        summary.rows[(source.split, "generate", None)] += 1
        yield {"messages": chat(problem, solution), "task": "generate", "label": None, "mode": None,
               "question_id": qid, "source_file": source.name}
    summary.files.append((source.name, source.split, lines))


def collect_rows(folder: str) -> tuple[dict[str, list[dict]], Summary]:
    """{split: rows} for every recognised file of `folder`, in file-name then line order."""
    summary = Summary()
    splits: dict[str, list[dict]] = {}
    seen: set = set()
    for source in find_files(folder):
        splits.setdefault(source.split, []).extend(rows_of_file(source, seen, summary))
    questions = {s: {r["question_id"] for r in rows} for s, rows in splits.items()}
    summary.questions_in_both_splits = len(questions.get("train", set()) & questions.get("test", set()))
    return {s: rows for s, rows in splits.items() if rows}, summary


def build_dataset(folder: str) -> tuple["datasets.DatasetDict", Summary]:  # noqa: F821 - imported lazily
    """The `datasets.DatasetDict` (train and/or test) and the Summary for `folder`."""
    import datasets
    features = datasets.Features({
        "messages": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
        "task": datasets.Value("string"), "label": datasets.Value("string"), "mode": datasets.Value("string"),
        "question_id": datasets.Value("int64"), "source_file": datasets.Value("string")})
    splits, summary = collect_rows(folder)
    order = [s for s in ("train", "test") if s in splits]
    return datasets.DatasetDict({s: datasets.Dataset.from_list(splits[s], features=features)
                                 for s in order}), summary


def format_summary(summary: Summary, folder: str) -> str:
    lines = [f"Read {len(summary.files)} file(s) from {folder}:"]
    lines += [f"  {name:<48} {split:<5} {n:>6} lines" for name, split, n in summary.files]
    lines.append(f"  {'split':<6} {'task':<9} {'mode':<7} {'rows':>6}")
    for split in ("train", "test"):
        for task, mode in (("verify", "cot"), ("verify", "direct"), ("generate", None)):
            n = summary.rows.get((split, task, mode), 0)
            if n:
                lines.append(f"  {split:<6} {task:<9} {mode or '-':<7} {n:>6}")
    disagreements = sum(summary.label_disagreements.values())
    detail = ", ".join(f"{k}: {v}" for k, v in sorted(summary.label_disagreements.items()))
    lines.append(f"Labels disagreeing with their file (correct -> Yes, incorrect -> No): {disagreements}"
                 + (f" ({detail})" if detail else ""))
    lines.append(f"Repeated correct solutions kept once as generate rows: {summary.repeated_solutions}")
    lines.append(f"Question ids in both train and test: {summary.questions_in_both_splits}")
    return "\n".join(lines)


def save_atomically(dataset, output_dir: str) -> None:
    """save_to_disk under a temporary sibling name, then move into place; replaces an
    earlier data set folder there, never anything else."""
    output_dir = os.path.abspath(output_dir)
    replaceable = os.path.isdir(output_dir) and (
        not os.listdir(output_dir) or os.path.exists(os.path.join(output_dir, "dataset_dict.json")))
    if os.path.exists(output_dir) and not replaceable:
        raise PreparationError(f"Output folder {output_dir} exists and is not a save_to_disk data set; "
                               f"refusing to overwrite it.")
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    # The data set goes one level down: mkdtemp's folder is private (0700), save_to_disk's not.
    work = tempfile.mkdtemp(prefix=".data-preparation-", dir=parent)
    new, old = os.path.join(work, "new"), os.path.join(work, "old")
    try:
        dataset.save_to_disk(new)
        if os.path.exists(output_dir):
            os.replace(output_dir, old)
        os.replace(new, output_dir)
    finally:
        shutil.rmtree(work)


# ---------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--path", required=True, help="the genrm-critiques checkout's critiques/ folder")
    p.add_argument("--repo", default=None, help="Hub data set repository to push to, e.g. user/genrm-gsm8k")
    p.add_argument("--output-dir", default=None, help="write a save_to_disk folder here (no network)")
    p.add_argument("--public", action=argparse.BooleanOptionalAction, default=False,
                   help="create the Hub repository as public (private by default)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not args.repo and not args.output_dir:
        print("error: give --repo (push to the Hub) or --output-dir (save locally), or both.", file=sys.stderr)
        return 2
    # Checked before any work so a missing token costs nothing and never reaches the network.
    token = os.environ.get("HF_TOKEN")
    if args.repo and not token:
        print(f"error: HF_TOKEN is not set; export a Hugging Face write token to push to {args.repo}.",
              file=sys.stderr)
        return 2
    import datasets
    datasets.disable_progress_bars()
    try:
        dataset, summary = build_dataset(args.path)
        print(format_summary(summary, args.path))
        if args.output_dir:
            save_atomically(dataset, args.output_dir)
            print(f"Saved to {args.output_dir}")
    except PreparationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.repo:
        try:
            dataset.push_to_hub(args.repo, private=not args.public, token=token)
        except Exception as e:  # noqa: BLE001 - hub errors come in many types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            print(f"error: could not push to the Hub repository {args.repo}: {first}", file=sys.stderr)
            return 1
        print(f"Pushed to https://huggingface.co/datasets/{args.repo}"
              f" ({'public' if args.public else 'private'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
