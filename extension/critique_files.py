"""The genrm-critiques files (Zhang et al. 2024, arXiv:2408.15240): which zips a folder holds,
their records, and each record's problem, solution and Yes/No label. Pure reading; what is made
of the rows is data_preparation.py's (a chat data set) or an experiment's.

    for source in find_files(folder):                 # SourceFile: path, mode, correct, split
        for number, record in read_records(source):   # line number from 1, the JSON object
            problem, solution, cue = parse_inputs(record["inputs"])
    rows = verification_rows(folder)                  # {(mode, split): [{"question", "solution", "label", ...}]}

A bad file or line stops with a PreparationError naming the file, line and field.
"""
from __future__ import annotations

import io
import json
import logging
import os
import re
import zipfile
from dataclasses import dataclass
from typing import Iterator, NamedTuple

from errors import UserError
from extension.critiques import COT_CUE, QUESTION as DIRECT_CUE

FILE_NAME = re.compile(r"^(?P<kind>critiques|rm)_(?P<correct>correct|incorrect)_solutions_batch_(?P<batch>\d+)"
                       r"(?P<val>_val)?\.zip$")
EXPECTED_FILES = ("critiques_{correct,incorrect}_solutions_batch_NN[_val].zip or "
                  "rm_{correct,incorrect}_solutions_batch_NN[_val].zip")
# The problem starts at the first line opening with "Q: "; everything before it is the
# instruction paragraph, identical in every upstream row.
QUESTION = re.compile(r"^Q: ", re.MULTILINE)
ANSWER_CUE = "\nA: Let's think step by step.\n"
CUES = {"cot": COT_CUE, "direct": DIRECT_CUE}
# A few critiques ask the question twice (once mid-critique); the label is the last one.
COT_LABEL = re.compile(re.escape(DIRECT_CUE) + r" (Yes|No)\Z")
FIELDS = {"inputs": str, "targets": str, "question_id": int, "model_output_id": int}
# Named as the script that reads these files logs, so that its --verbose and the tests see one logger.
log = logging.getLogger("data_preparation")



class PreparationError(UserError, ValueError):
    """The input folder or a file in it is unusable; the message is one sentence naming it."""


@dataclass(frozen=True)
class SourceFile:
    """One recognised zip: where its rows go and what they hold."""
    path: str
    mode: str  # "cot" (critiques_*) or "direct" (rm_*)
    correct: bool  # the file's solutions are correct, so their label should be "Yes"
    split: str  # "test" for *_val files, else "train"

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


class ParsedInputs(NamedTuple):
    problem: str
    solution: str
    cue: str


# ---------------------------------------------------------------------- pure parsing
def classify(path: str) -> SourceFile | None:
    """A file's path -> its SourceFile, or None when its name is not one of the upstream ones."""
    m = FILE_NAME.match(os.path.basename(path))
    if m is None:
        return None
    return SourceFile(path=path, mode="cot" if m["kind"] == "critiques" else "direct",
                      correct=m["correct"] == "correct", split="test" if m["val"] else "train")


def verification_prompt(text: str) -> str:
    """`inputs` without the instruction paragraph: from "Q: " to the cue, trailing space stripped."""
    m = QUESTION.search(text)
    if m is None:
        raise ValueError("field 'inputs': no line starts with 'Q: '")
    return text[m.start():].rstrip()


def parse_inputs(text: str) -> ParsedInputs:
    """`inputs` -> (problem, solution, cue), each stripped; cue is COT_CUE or DIRECT_CUE.
    Raises ValueError naming the field when a marker is missing."""
    prompt = verification_prompt(text)
    cue = next((c for c in CUES.values() if prompt.endswith("\n" + c)), None)
    if cue is None:
        raise ValueError(f"field 'inputs': does not end with {COT_CUE!r} or {DIRECT_CUE!r}")
    body = prompt[len("Q: "):-len("\n" + cue)]
    problem, found, solution = body.partition(ANSWER_CUE)
    if not found:
        raise ValueError(f"field 'inputs': no {ANSWER_CUE.strip()!r} line after the question")
    problem, solution = problem.strip(), solution.strip()
    if not problem or not solution:
        raise ValueError(f"field 'inputs': empty {'problem' if not problem else 'solution'}")
    return ParsedInputs(problem, solution, cue)


def parse_label(target: str, mode: str) -> str:
    """The "Yes"/"No" a target ends with: the whole target (direct) or the critique's last
    line "Verification: Is the answer correct (Yes/No)? Yes|No" (cot)."""
    target = target.strip()
    if mode == "direct":
        if target in ("Yes", "No"):
            return target
        raise ValueError(f"field 'targets': expected ' Yes' or ' No', got {target[:40]!r}")
    m = COT_LABEL.search(target)
    if m is None:
        raise ValueError(f"field 'targets': does not end with '{DIRECT_CUE} Yes' or '... No' "
                         f"(ends {target[-40:]!r})")
    return m[1]


def check_fields(record) -> None:
    """Every upstream field present with its type (bool is not an int here)."""
    if not isinstance(record, dict):
        raise ValueError(f"field (the line itself): expected a JSON object, got {type(record).__name__}")
    for name, kind in FIELDS.items():
        value = record.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            got = "missing" if name not in record else type(value).__name__
            raise ValueError(f"field {name!r}: expected {kind.__name__}, got {got}")


def find_files(folder: str) -> list[SourceFile]:
    """The recognised files of `folder`, sorted by name; unrecognised ones are logged."""
    if not os.path.isdir(folder):
        raise PreparationError(f"Input folder {folder} does not exist (expected a folder of {EXPECTED_FILES}).")
    names = sorted(os.listdir(folder))
    found, skipped = [], []
    for name in names:
        source = classify(os.path.join(folder, name))
        if source is None or not os.path.isfile(source.path):
            skipped.append(name)
        else:
            found.append(source)
    if skipped:
        log.warning("ignoring %d unrecognised file(s) in %s: %s", len(skipped), folder, ", ".join(skipped))
    if not found:
        what = "is empty" if not names else f"holds none of the expected files (found: {', '.join(names[:5])})"
        raise PreparationError(f"Input folder {folder} {what}; expected {EXPECTED_FILES}.")
    return found


def read_records(source: SourceFile) -> Iterator[tuple[int, dict]]:
    """(line number from 1, record) for each non-blank line of the zip's .jsonl."""
    member = source.name[:-len(".zip")] + ".jsonl"
    try:
        with zipfile.ZipFile(source.path) as z:
            if member not in z.namelist():
                raise PreparationError(f"{source.path} holds no {member} (found: {', '.join(z.namelist())}).")
            with z.open(member) as raw:
                for number, line in enumerate(io.TextIOWrapper(raw, encoding="utf-8"), start=1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise PreparationError(f"{source.path}, line {number}: not valid JSON "
                                               f"({e.msg} at column {e.colno}).") from None
                    try:
                        check_fields(record)
                    except ValueError as e:
                        raise PreparationError(f"{source.path}, line {number}, {e}.") from None
                    yield number, record
    except zipfile.BadZipFile as e:
        raise PreparationError(f"{source.path} is not a readable zip file ({e}).") from None
    except UnicodeDecodeError as e:
        raise PreparationError(f"{source.path}: {member} is not UTF-8 text ({e.reason}).") from None




def verification_rows(folder: str) -> dict[tuple[str, str], list[dict]]:
    """{(mode, split): rows} of every recognised file in `folder` ("cot"/"direct", "train"/"test"),
    each row {"question_id", "question", "solution", "label" (True: Yes), "target"}."""
    found: dict[tuple[str, str], list[dict]] = {}
    for source in find_files(folder):
        for number, record in read_records(source):
            try:
                question, solution, _ = parse_inputs(record["inputs"])
                label = parse_label(record["targets"], source.mode)
            except ValueError as e:
                raise PreparationError(f"{source.path}, line {number}, {e}.") from None
            found.setdefault((source.mode, source.split), []).append(
                {"question_id": record["question_id"], "question": question, "solution": solution,
                 "label": label == "Yes", "target": record["targets"].strip()})
    return found
