"""Load a data set, adapt it to one canonical row per training type, and filter it.

    CustomDataset("HuggingFaceTB/smol-smoltalk", split="train", training_type="sft")
    CustomDataset("embedded/data/prefs", split="test", training_type="dpo")
    CustomDataset("../shared/data/hh-rlhf/harmless-base-test-part1.jsonl.gz", "train", "dpo")

Sources: a Hub name (`load_dataset`), a local file (.json/.jsonl/.csv/.parquet, optionally
.gz), a `save_to_disk` folder, or a folder of such files whose names give the splits
(`train.jsonl`, `test_prefs.jsonl`, ...).

Canonical rows (what the collators consume):
  sft:                 {"messages": [{"role", "content"}, ...]}         (at least one assistant turn)
  sft_verifier:        {"messages": [...], "task": "verify" | "generate"}
  dpo / bt / orpo:     {"prompt": [messages...], "chosen": [assistant message],
                        "rejected": [assistant message]}
  kto:                 {"prompt": [messages...], "completion": [assistant message], "label": bool}
                        (True: desirable); a chosen/rejected pair becomes two such rows (unpair)
  grpo:                {"prompt": [messages...], "reference": str | None}   (the prompt ends with a
                        user turn; the reference reply, where the source has one, feeds the
                        correctness reward)
Known source formats: smoltalk / ultrafeedback `messages`; ultrafeedback_binarized
`prompt`/`chosen`/`rejected` message lists; Anthropic hh-rlhf `chosen`/`rejected`
transcripts ("\\n\\nHuman: ...\\n\\nAssistant: ..."); `prompt`/`completion` strings (kto: with a
boolean `label`; or TRL's conversational prompt/completion message lists).

Filters, in this order: --dataset-source, --{train,test}-percentile, then
--{train,test}-dataset-length (first rows, or a seeded random subset with
--dataset-random-sample). Bad rows raise `DataError` naming the data set, row and field;
the row index counts from 0 in the source split (the file, for a single file),
before any held-out split or filter.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import numpy as np
import torch

from data_files import DataError, load_splits, pick_split

ROLES = ("system", "user", "assistant", "tool")
SFT_TYPES = ("sft", "sft_verifier")
HH_TURN = re.compile(r"\n\n(Human|Assistant):")
log = logging.getLogger("data")


@dataclass
class DataStats:
    """Counts reported in the logs: rows read, rows kept by each filter, rows skipped."""
    source_rows: int = 0
    after_source: int = 0
    after_percentile: int = 0
    skipped_bad_rows: int = 0


# ---------------------------------------------------------------------- format adapters

def hh_transcript_to_messages(text: str) -> list[dict]:
    """Anthropic "\\n\\nHuman: ...\\n\\nAssistant: ..." transcript -> chat messages."""
    if not isinstance(text, str):
        raise ValueError("transcript is not a string")
    pieces = HH_TURN.split(text)
    if pieces[0].strip():
        raise ValueError("transcript does not start with '\\n\\nHuman:'")
    messages = []
    for speaker, content in zip(pieces[1::2], pieces[2::2]):
        messages.append({"role": "user" if speaker == "Human" else "assistant",
                         "content": content.strip()})
    if not messages:
        raise ValueError("transcript has no 'Human:' or 'Assistant:' turns")
    return messages


def _check_messages(messages, field: str, need_assistant: bool = True) -> None:
    """Raise ValueError('<field>...: reason') for a malformed message list."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{field}: expected a non-empty list of messages")
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"{field}[{j}]: expected an object with 'role' and 'content'")
        if m["role"] not in ROLES:
            raise ValueError(f"{field}[{j}].role: unknown role {m['role']!r} (expected one of {', '.join(ROLES)})")
        if not isinstance(m["content"], str):
            raise ValueError(f"{field}[{j}].content: expected a string, got {type(m['content']).__name__}")
        if not m["content"].strip():
            raise ValueError(f"{field}[{j}].content: empty content")
    if need_assistant and not any(m["role"] == "assistant" for m in messages):
        raise ValueError(f"{field}: the conversation has no assistant turn")
    if need_assistant and messages[0]["role"] == "assistant":
        raise ValueError(f"{field}[0].role: the conversation opens with an assistant turn, which answers no prompt")


def _clean(messages: list) -> list[dict]:
    # Arrow adds None for keys other rows have (tool_calls, ...); keep role and content only.
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def adapt_sft(row: dict) -> dict:
    """Any known format -> {"messages": [...]}."""
    if "messages" in row and row["messages"] is not None:
        messages = row["messages"]
        _check_messages(messages, "messages")
        return {"messages": _clean(messages)}
    if isinstance(row.get("chosen"), str):          # hh-rlhf: train on the chosen transcript
        try:
            messages = hh_transcript_to_messages(row["chosen"])
        except ValueError as e:
            raise ValueError(f"chosen: {e}") from None
        _check_messages(messages, "chosen")
        return {"messages": messages}
    if isinstance(row.get("chosen"), list):         # ultrafeedback prefs: the chosen conversation
        _check_messages(row["chosen"], "chosen")
        return {"messages": _clean(row["chosen"])}
    if "prompt" in row and "completion" in row:
        for key in ("prompt", "completion"):
            if not isinstance(row[key], str) or not row[key].strip():
                raise ValueError(f"{key}: expected a non-empty string")
        return {"messages": [{"role": "user", "content": row["prompt"]},
                             {"role": "assistant", "content": row["completion"]}]}
    raise ValueError("missing column: expected 'messages', 'chosen' or 'prompt'+'completion'")


def adapt_preference(row: dict) -> dict:
    """Any known format -> {"prompt": [...], "chosen": [assistant], "rejected": [assistant]}."""
    for key in ("chosen", "rejected"):
        if row.get(key) is None:
            raise ValueError(f"{key}: missing column")
    chosen, rejected = row["chosen"], row["rejected"]
    if isinstance(chosen, str) and isinstance(rejected, str):   # hh-rlhf transcripts
        try:
            chosen = hh_transcript_to_messages(chosen)
        except ValueError as e:
            raise ValueError(f"chosen: {e}") from None
        try:
            rejected = hh_transcript_to_messages(rejected)
        except ValueError as e:
            raise ValueError(f"rejected: {e}") from None
    for key, conv in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(conv, list) or not conv:
            raise ValueError(f"{key}: expected a message list or a transcript string")
        if not isinstance(conv[-1], dict) or conv[-1].get("role") != "assistant":
            raise ValueError(f"{key}: the last message is not an assistant message")
        _check_messages(conv, key)
    prompt_c, prompt_r = _clean(chosen[:-1]), _clean(rejected[:-1])
    if prompt_c != prompt_r:
        raise ValueError("chosen/rejected: the two conversations have different prompts")
    if not prompt_c:
        raise ValueError("chosen: no prompt before the reply")
    return {"prompt": prompt_c, "chosen": _clean(chosen[-1:]), "rejected": _clean(rejected[-1:])}


def adapt_verifier(row: dict) -> list[dict]:
    """sft_verifier rows -> [{"messages": [...], "task": "verify" | "generate"}, ...]:
    - rows with a `task` column (extension/data_preparation.py's output) pass through;
    - problems with known answers (`question`, `correct_solution`, `incorrect_solution`, the
      bundled problems set) give three rows: the verification of each solution (the
      rule-based step-by-step critique of extension/critiques.py as the target) and the
      generation of the correct solution."""
    if row.get("task") is not None:
        if row["task"] not in ("verify", "generate"):
            raise ValueError(f"task: expected 'verify' or 'generate', got {row['task']!r}")
        return [{**adapt_sft(row), "task": row["task"]}]
    if all(isinstance(row.get(k), str) and row[k].strip() for k in ("question", "correct_solution", "incorrect_solution")):
        from extension.critiques import rule_based_critique, verification_prompt
        out = []
        for key in ("correct_solution", "incorrect_solution"):
            try:
                critique, _ = rule_based_critique(row[key])
            except ValueError as e:
                raise ValueError(f"{key}: {e}") from None
            out.append({"messages": [{"role": "user", "content": verification_prompt(row["question"], row[key])},
                                     {"role": "assistant", "content": critique}], "task": "verify"})
        out.append({"messages": [{"role": "user", "content": row["question"].strip()},
                                 {"role": "assistant", "content": row["correct_solution"].strip()}], "task": "generate"})
        return out
    raise ValueError("missing column: expected 'messages' with 'task' (extension/data_preparation.py), or "
                     "'question', 'correct_solution' and 'incorrect_solution'")


def adapt_prompt(row: dict) -> dict:
    """Any known format -> {"prompt": [...], "reference": str | None} for online RL:
    - problems (`question`, with `correct_solution`, `solution` or `answer`): the question as
      the user turn, the solution (or "The answer is N.") as the reference;
    - `messages`: the turns before the last assistant turn, which is the reference (a
      conversation without an assistant turn is all prompt, with no reference);
    - preference pairs (`chosen`/`rejected`): the prompt and the chosen reply;
    - `prompt`(+`completion`) strings: the prompt as the user turn (the completion as reference)."""
    if isinstance(row.get("question"), str):
        if not row["question"].strip():
            raise ValueError("question: empty string")
        reference = next((row[k] for k in ("correct_solution", "solution") if isinstance(row.get(k), str)), None)
        if reference is None and row.get("answer") is not None:
            reference = f"The answer is {row['answer']}."
        return {"prompt": [{"role": "user", "content": row["question"].strip()}], "reference": reference}
    if row.get("messages") is not None:
        messages = row["messages"]
        _check_messages(messages, "messages", need_assistant=False)
        messages = _clean(messages)
        if any(m["role"] == "assistant" for m in messages):
            last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
            prompt, reference = messages[:last], messages[last]["content"]
        else:
            prompt, reference = messages, None
        if not prompt or prompt[-1]["role"] != "user":
            raise ValueError("messages: the prompt (the turns before the last assistant reply) must end with a user turn")
        return {"prompt": prompt, "reference": reference}
    if row.get("chosen") is not None:
        pair = adapt_preference(row)
        return {"prompt": pair["prompt"], "reference": pair["chosen"][-1]["content"]}
    if isinstance(row.get("prompt"), str):
        if not row["prompt"].strip():
            raise ValueError("prompt: empty string")
        completion = row.get("completion")
        return {"prompt": [{"role": "user", "content": row["prompt"]}],
                "reference": completion if isinstance(completion, str) and completion.strip() else None}
    raise ValueError("missing column: expected 'question', 'messages', 'chosen'/'rejected' or 'prompt'")


def adapt_kto(row: dict) -> dict:
    """kto rows -> {"prompt": [...], "completion": [assistant message], "label": bool}, from
    `prompt`, `completion` (a user turn's and the reply's strings, or TRL's conversational form:
    prompt messages and a one-message assistant completion) and a boolean `label`; a row with
    `chosen`/`rejected` instead is a pair in any format dpo reads (adapt_preference), which
    unpair() splits into a desirable and an undesirable row."""
    if row.get("completion") is None and row.get("chosen") is not None:
        return adapt_preference(row)
    if row.get("completion") is None:
        raise ValueError("completion: missing column (kto reads prompt, completion and label, or chosen/rejected pairs)")
    label = row.get("label")
    if not isinstance(label, bool):
        got = "nothing" if label is None else f"{type(label).__name__} {label!r}"
        raise ValueError(f"label: expected true or false (is the completion desirable?), got {got}")
    prompt, completion = row.get("prompt"), row["completion"]
    if isinstance(prompt, str) and isinstance(completion, str):
        for key, text in (("prompt", prompt), ("completion", completion)):
            if not text.strip():
                raise ValueError(f"{key}: empty string")
        return {"prompt": [{"role": "user", "content": prompt}],
                "completion": [{"role": "assistant", "content": completion}], "label": label}
    if isinstance(prompt, list) and isinstance(completion, list):
        _check_messages(prompt, "prompt", need_assistant=False)
        _check_messages(completion, "completion", need_assistant=False)
        if prompt[-1]["role"] == "assistant":
            raise ValueError("prompt: ends with an assistant turn, which the completion would follow")
        if len(completion) != 1 or completion[0]["role"] != "assistant":
            raise ValueError(f"completion: expected one assistant message, got {len(completion)} messages"
                             f"{'' if len(completion) != 1 else ' of role ' + completion[0]['role']}")
        return {"prompt": _clean(prompt), "completion": _clean(completion), "label": label}
    raise ValueError("prompt/completion: expected two strings or two message lists")


def unpair(rows: list[dict]) -> list[dict]:
    """kto: each pair (adapt_kto's chosen/rejected rows) -> a desirable row with its chosen reply and
    an undesirable one with its rejected reply, as TRL's unpair_preference_dataset; unpaired rows
    stay first, as they were. TRL's layout too: every desirable row of the split, then every
    undesirable one (in source order each), since kto's KL estimate pairs each prompt with its
    neighbour's completion in the batch, and the two rows of one pair share their prompt."""
    pairs = [r for r in rows if "chosen" in r]
    return ([r for r in rows if "chosen" not in r]
            + [{"prompt": r["prompt"], "completion": r[side], "label": side == "chosen", "row": r["row"]}
               for side in ("chosen", "rejected") for r in pairs])


ADAPTERS = {"grpo": adapt_prompt, "sft": adapt_sft, "sft_verifier": adapt_verifier, "dpo": adapt_preference,
            "bt": adapt_preference, "orpo": adapt_preference, "kto": adapt_kto}


def prompt_and_reference(row: dict) -> tuple[list[dict], str | None]:
    """A canonical row (any kind) -> (prompt messages, reference reply): the chosen reply of
    a preference pair, a kto row's completion if it is desirable (else None: no reference), or
    the last assistant turn of a conversation and what precedes it."""
    if "chosen" in row:
        return row["prompt"], row["chosen"][-1]["content"]
    if "completion" in row:
        return row["prompt"], row["completion"][-1]["content"] if row["label"] else None
    if "reference" in row:
        return row["prompt"], row["reference"]
    messages = row["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last], messages[last]["content"]


def evaluation_prompts(name_or_path: str, split: str = "test", length: int | None = None,
                       skip_bad_rows: bool = False) -> list[tuple[list[dict], str]]:
    """(prompt, reference reply) pairs of any supported data set, preference pairs (by their
    chosen/rejected columns) or conversations, for generation-based evaluation."""
    columns = set(next(iter(load_splits(name_or_path).values())).column_names)
    kind = "dpo" if {"chosen", "rejected"} <= columns else "sft"
    ds = CustomDataset(name_or_path, split, kind, length=length, skip_bad_rows=skip_bad_rows)
    return [prompt_and_reference(row) for row in ds]


# ------------------------------------------------------------------------------ filters

def string_length(value) -> int:
    """Characters of text in a row: the sum over every string it holds, at any depth."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(string_length(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(string_length(v) for v in value)
    return 0


def percentile_filter(ds, percentile: float):
    """Keep rows whose string length is <= the `percentile`-th percentile of lengths."""
    lengths = np.array([string_length(r) for r in ds])
    threshold = np.percentile(lengths, percentile)
    return ds.select(np.flatnonzero(lengths <= threshold))


def length_filter(ds, length: int, random_sample: bool, seed: int):
    """Cap the row count: the first `length` rows, or a seeded random subset (in source order)."""
    if length >= len(ds):
        return ds
    if random_sample:
        keep = np.sort(np.random.default_rng(seed).choice(len(ds), size=length, replace=False))
        return ds.select(keep)
    return ds.select(range(length))


# ------------------------------------------------------------------------------ dataset

class CustomDataset(torch.utils.data.Dataset):
    """Canonical rows of one split of a data set, after filtering.

    Args:
        name_or_path: Hub name, file, or folder.
        split: "train" or "test".
        training_type: selects the canonical row (see the module docstring).
        source: keep rows whose `source` column equals this (--dataset-source).
        percentile: keep rows with string length <= this percentile, in (0, 100].
        length: keep at most this many rows.
        random_sample: with `length`, take a random subset seeded by `seed`.
        skip_bad_rows: skip (and count, logging the first few reasons) rows that fail
            validation instead of stopping at the first one. Real data sets have such
            rows: the hh-rlhf slice has transcripts with an empty last reply and one pair
            whose transcripts diverge before the last turn.
    """

    def __init__(self, name_or_path: str, split: str, training_type: str, *,
                 source: str | None = None, percentile: float | None = None,
                 length: int | None = None, random_sample: bool = False, seed: int = 0,
                 skip_bad_rows: bool = False):
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if training_type not in ADAPTERS:
            raise ValueError(f"no data adapter for training type {training_type!r}")
        self.name, self.split, self.training_type = name_or_path, split, training_type
        self.skip_bad_rows = skip_bad_rows
        self.stats = DataStats()
        # Number rows before any split or filter, so errors point at the row in the source.
        splits = {k: v.add_column("_row", list(range(len(v)))) for k, v in load_splits(name_or_path).items()}
        ds = pick_split(splits, split, training_type, name_or_path)
        self.stats.source_rows = len(ds)
        if source is not None:
            if "source" not in ds.column_names:
                raise DataError(f"Data set {name_or_path} ({split}) has no 'source' column, "
                                f"which --dataset-source needs.")
            ds = ds.filter(lambda s: s == source, input_columns="source")
            if len(ds) == 0:
                raise DataError(f"Data set {name_or_path} ({split}) has no rows with source "
                                f"{source!r}.")
        self.stats.after_source = len(ds)
        if percentile is not None and len(ds):
            ds = percentile_filter(ds, percentile)
        self.stats.after_percentile = len(ds)
        if length is not None:
            ds = length_filter(ds, length, random_sample, seed)
        self.rows = self._adapt(ds)
        if training_type == "kto":
            self.rows = unpair(self.rows)
        if not self.rows:
            raise DataError(f"Data set {name_or_path} ({split}) is empty after filtering.")

    def _adapt(self, ds) -> list[dict]:
        adapt = ADAPTERS[self.training_type]
        rows = []
        for raw in ds:
            row_idx = raw.pop("_row")
            try:
                adapted = adapt(raw)
            except ValueError as e:
                where = f"Data set {self.name} ({self.split}), row {row_idx}, field {e}"
                if not self.skip_bad_rows:
                    raise DataError(f"{where} (--skip-bad-rows skips and counts such rows).") from None
                self.stats.skipped_bad_rows += 1
                if self.stats.skipped_bad_rows <= 5:
                    log.warning("skipped: %s", where)
                continue
            # An adapter may turn one source row into several (a problem -> verify + generate rows).
            for row in adapted if isinstance(adapted, list) else [adapted]:
                row["row"] = row_idx
                rows.append(row)
        return rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]

    def describe(self) -> str:
        s = self.stats
        text = (f"{self.name} [{self.split}]: {s.source_rows} rows, {s.after_source} after source filter, "
                f"{s.after_percentile} after percentile filter, {len(self)} used")
        if s.skipped_bad_rows:
            text += f", {s.skipped_bad_rows} bad rows skipped"
        return text
