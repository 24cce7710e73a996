"""The malformed-input catalogue: every entry point, fed one bad input at a time, stops with
exit code 2 and one sentence (`error: ...`, one line) naming the file, row and field or the
flag, and no traceback; where the documented policy is to skip (identical preference pairs,
rows under --skip-bad-rows) it exits 0 and counts the skip. The "Bad input" table of
docs/data.md lists the same cases by name (a test below keeps the two in step).

Each case is a row of CASES: name, entry point, a function that writes the bad input under a
temporary folder and returns the command line, the expected exit code and a phrase of the
sentence ("{tmp}" stands for the temporary folder). Entry points run in-process through
their main(argv); each case's data is a handful of rows and no case trains for more than
one step, so the whole table runs in about a minute on 2 CPU cores.
"""
from __future__ import annotations

import gzip
import json
import logging
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from conftest import EMBEDDED_MODEL, REPO, write_jsonl

MODEL = str(EMBEDDED_MODEL)
USER = {"role": "user", "content": "What is 2 + 3?"}
REPLY = {"role": "assistant", "content": "2 + 3 = 5. The answer is 5."}
WRONG = {"role": "assistant", "content": "The answer is 6."}
GOOD_CHAT = {"messages": [USER, REPLY]}
GOOD_PAIR = {"chosen": [USER, REPLY], "rejected": [USER, WRONG]}
GOOD_PROBLEM = {"question": "What is 2 + 3?", "correct_solution": "2 + 3 = 5. The answer is 5.",
                "incorrect_solution": "2 + 3 = 6. The answer is 6."}
# No training, no generation: the cases that get past the data stop at the first step.
FAST = ["--max-steps", "1", "--batch-size", "2", "--max-length", "64", "--val-generations", "0",
        "--num-sanity-val-steps", "0"]


@dataclass
class Case:
    name: str
    entry: str                                  # train | upload_to_hub | infer | evaluate | data_preparation | verify
    build: Callable[[Path, "Shared"], list[str]]
    phrase: str                                 # part of the error sentence ("{tmp}": the case's folder)
    code: int = 2                               # 0: a documented, counted skip
    env: dict = field(default_factory=dict)     # environment for this case only ("{tmp}" allowed)


class Shared:
    """Inputs several cases need, made on first use: a finished one-step SFT run."""

    def __init__(self, request):
        self.request = request

    @property
    def sft_run(self) -> Path:
        return self.request.getfixturevalue("sft_run")


def data_folder(tmp: Path, train: list, test: list | None = None, name: str = "d") -> str:
    write_jsonl(tmp / name / "train.jsonl", train)
    write_jsonl(tmp / name / "test.jsonl", test if test is not None else train)
    return str(tmp / name)


def train_on(training_type: str, train: list, test: list | None = None, *extra: str):
    """A build function: train.py of `training_type` on a folder holding `train` (and `test`)."""
    def build(tmp: Path, shared: Shared) -> list[str]:
        verifier = ["--verifier-eval-rows", "0"] if training_type == "sft_verifier" else []
        return ["--training-type", training_type, "--dataset-name", data_folder(tmp, train, test),
                "--storage-path", str(tmp / "runs"), *FAST, *verifier, *extra]
    return build


def train_flags(*argv: str):
    def build(tmp: Path, shared: Shared) -> list[str]:
        return ["--storage-path", str(tmp / "runs"), *FAST, *argv]
    return build


def train_file(name: str, content: bytes, *extra: str):
    """train.py on one data file with these exact bytes."""
    def build(tmp: Path, shared: Shared) -> list[str]:
        (tmp / name).write_bytes(content)
        return ["--dataset-name", str(tmp / name), "--storage-path", str(tmp / "runs"), *FAST, *extra]
    return build


def yaml_config(text: str):
    def build(tmp: Path, shared: Shared) -> list[str]:
        (tmp / "c.yaml").write_text(text)
        return ["--config", str(tmp / "c.yaml"), "--storage-path", str(tmp / "runs")]
    return build


def jsonl_bytes(rows: list) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def truncated_gzip() -> bytes:
    whole = gzip.compress(jsonl_bytes([GOOD_CHAT] * 50))
    return whole[: len(whole) // 2]


def model_copy(tmp: Path, drop: tuple[str, ...] = (), template: bool = True) -> str:
    """The embedded model folder, less the files in `drop`, optionally without a chat template."""
    folder = tmp / "model"
    shutil.copytree(EMBEDDED_MODEL, folder)
    for name in drop:
        (folder / name).unlink()
    if not template:
        (folder / "chat_template.jinja").unlink(missing_ok=True)
        config = json.loads((folder / "tokenizer_config.json").read_text())
        config.pop("chat_template", None)
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return str(folder)


def corrupt_ckpt(tmp: Path) -> str:
    (tmp / "broken.ckpt").write_bytes(b"PK\x03\x04 this is not a checkpoint" * 10)
    return str(tmp / "broken.ckpt")


def foreign_ckpt(tmp: Path) -> str:
    import torch
    torch.save({"state_dict": {}, "epoch": 0}, tmp / "foreign.ckpt")
    return str(tmp / "foreign.ckpt")


def critiques(tmp: Path, content: bytes, truncate: bool = False) -> str:
    """A critiques folder holding one upstream-named zip with `content` as its .jsonl."""
    folder = tmp / "critiques"
    folder.mkdir()
    path = folder / "rm_correct_solutions_batch_00.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("rm_correct_solutions_batch_00.jsonl", content * (200 if truncate else 1))
    if truncate:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    return str(folder)


def prep(content: bytes, truncate: bool = False):
    def build(tmp: Path, shared: Shared) -> list[str]:
        return ["--path", critiques(tmp, content, truncate), "--output-dir", str(tmp / "out")]
    return build


def verify_on(content: bytes, *extra: str):
    def build(tmp: Path, shared: Shared) -> list[str]:
        (tmp / "rows.jsonl").write_bytes(content)
        return ["--model", MODEL, "--input", str(tmp / "rows.jsonl"), "--output", str(tmp / "out.jsonl"),
                "--max-new-tokens", "4", "--k-min", "1", "--k-max", "1", *extra]
    return build


def infer_on(rows: list | None, *extra: str):
    def build(tmp: Path, shared: Shared) -> list[str]:
        argv = ["--model", MODEL, "--output", str(tmp / "out.jsonl"), "--max-new-tokens", "4", *extra]
        if rows is not None:
            argv += ["--input", str(write_jsonl(tmp / "prompts.jsonl", rows))]
        return argv
    return build


def evaluate_on(rows: list | None, *extra: str):
    def build(tmp: Path, shared: Shared) -> list[str]:
        argv = ["--models", MODEL, "--output", str(tmp / "report.json"), "--max-new-tokens", "4",
                "--num-prompts", "2", "--verifier-rows", "0", *extra]
        if rows is not None:
            argv += ["--dataset-name", data_folder(tmp, rows)]
        return argv
    return build


def upload(*extra: str, ckpt: Callable[[Path, Shared], str] | None = None):
    def build(tmp: Path, shared: Shared) -> list[str]:
        path = ckpt(tmp, shared) if ckpt else str(shared.sft_run)
        return ["--checkpoint-path", path, *extra]
    return build


def messages(*turns) -> dict:
    return {"messages": list(turns)}


NOT_UTF8 = b'{"messages": [{"role": "user", "content": "caf\xe9"}, {"role": "assistant", "content": "ok"}]}\n'
REFUSED = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
           "S3_ENDPOINT": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard"}

CASES = [
    # ---- train.py, SFT rows
    Case("sft: no messages column", "train", train_on("sft", [{"text": "hello"}]),
         "row 0, field missing column: expected 'messages'"),
    Case("sft: unknown role", "train", train_on("sft", [messages({"role": "bot", "content": "hi"}, REPLY)]),
         "row 0, field messages[0].role: unknown role 'bot'"),
    Case("sft: empty content", "train", train_on("sft", [messages({"role": "user", "content": ""}, REPLY)]),
         "row 0, field messages[0].content: empty content"),
    Case("sft: content is a number", "train", train_on("sft", [GOOD_CHAT, messages(USER, {"role": "assistant", "content": 5})]),
         "messages[1].content: expected a string"),
    Case("sft: no assistant turn", "train", train_on("sft", [GOOD_CHAT, messages(USER)]),
         "row 1, field messages: the conversation has no assistant turn"),
    Case("sft: conversation opens with the assistant", "train", train_on("sft", [GOOD_CHAT, messages(REPLY, USER, REPLY)]),
         "row 1, field messages[0].role: the conversation opens with an assistant turn"),
    Case("sft: messages is a string", "train", train_on("sft", [{"messages": "hi there"}]),
         "field messages: expected a non-empty list of messages"),
    Case("sft: message without a role", "train", train_on("sft", [messages({"content": "hi"}, REPLY)]),
         "messages[0]: expected an object with 'role' and 'content'"),
    Case("sft: prompt/completion with an empty completion", "train",
         train_on("sft", [{"prompt": "What is 2 + 3?", "completion": " "}]),
         "field completion: expected a non-empty string"),
    Case("sft: non-UTF-8 bytes", "train", train_file("bad.jsonl", jsonl_bytes([GOOD_CHAT] * 3) + NOT_UTF8 * 20),
         "Data file {tmp}/bad.jsonl, line 4: not UTF-8 text (byte 0xe9 at column 47)"),
    Case("sft: JSONL line that is not JSON", "train",
         train_file("bad.jsonl", jsonl_bytes([GOOD_CHAT] * 10) + b"{not json\n" + jsonl_bytes([GOOD_CHAT] * 10)),
         "Data file {tmp}/bad.jsonl, line 11: not valid JSON (Expecting property name enclosed in double quotes "
         "at column 2)"),
    Case("sft: JSONL line that is a list", "train", train_file("bad.jsonl", jsonl_bytes([GOOD_CHAT, [1, 2]])),
         "Data file {tmp}/bad.jsonl, line 2: expected a JSON object, got list"),
    Case("sft: truncated gzip", "train", train_file("bad.jsonl.gz", truncated_gzip()),
         "Data file {tmp}/bad.jsonl.gz is truncated or not valid gzip"),
    Case("sft: empty file", "train", train_file("empty.jsonl", b""), "Data file {tmp}/empty.jsonl is empty"),
    Case("sft: unsupported file type", "train", train_file("data.zip", b"PK\x05\x06" + bytes(18)),
         "Data file {tmp}/data.zip has an unsupported extension"),
    Case("sft: column type changes between rows", "train",
         train_file("mixed.jsonl", jsonl_bytes([GOOD_CHAT] * 5 + [{"messages": "hello"}] + [GOOD_CHAT] * 4)),
         "row 5, field messages: expected a non-empty list of messages"),
    Case("sft: no row left after --dataset-source", "train", train_on("sft", [GOOD_CHAT], None, "--dataset-source", "x"),
         "has no 'source' column, which --dataset-source needs"),
    Case("sft: no row left after truncation", "train", train_on("sft", [GOOD_CHAT], None, "--max-length", "2"),
         "no usable row is left after truncation to --max-length 2"),
    Case("sft: missing data set path", "train", train_flags("--dataset-name", "./no/such/data.jsonl"),
         "Data set path ./no/such/data.jsonl does not exist"),
    # ---- train.py, preference rows (dpo, bt)
    Case("dpo: chosen == rejected (counted skip)", "train",
         train_on("dpo", [GOOD_PAIR, {"chosen": [USER, REPLY], "rejected": [USER, REPLY]}], None, "--mode", "test"),
         "dropped: 1 identical", code=0),
    Case("dpo: rejected column missing", "train", train_on("dpo", [{"chosen": [USER, REPLY]}]),
         "row 0, field rejected: missing column"),
    Case("dpo: different prompts", "train",
         train_on("dpo", [{"chosen": [USER, REPLY], "rejected": [{"role": "user", "content": "Hi"}, WRONG]}]),
         "row 0, field chosen/rejected: the two conversations have different prompts"),
    Case("dpo: last message not from the assistant", "train",
         train_on("dpo", [{"chosen": [USER, REPLY, USER], "rejected": [USER, WRONG]}]),
         "row 0, field chosen: the last message is not an assistant message"),
    Case("dpo: reply without a prompt", "train", train_on("dpo", [{"chosen": [REPLY], "rejected": [WRONG]}]),
         "row 0, field chosen[0].role: the conversation opens with an assistant turn"),
    Case("bt: transcript not starting with Human", "train",
         train_on("bt", [{"chosen": "Assistant: hi", "rejected": "\n\nHuman: a\n\nAssistant: b"}]),
         "field chosen: transcript does not start with"),
    Case("bt: bad row skipped with --skip-bad-rows (counted skip)", "train",
         train_on("bt", [GOOD_PAIR, GOOD_PAIR, {"chosen": [USER, REPLY], "rejected": 3}], None,
                  "--skip-bad-rows", "--mode", "test"),
         "1 bad rows skipped", code=0),
    # ---- train.py, sft_verifier rows
    Case("sft_verifier: unknown task", "train",
         train_on("sft_verifier", [{**GOOD_CHAT, "task": "judge"}]), "row 0, field task: expected 'verify' or 'generate'"),
    Case("sft_verifier: problem without incorrect_solution", "train",
         train_on("sft_verifier", [{k: v for k, v in GOOD_PROBLEM.items() if k != "incorrect_solution"}]),
         "row 0, field missing column: expected 'messages' with 'task'"),
    Case("sft_verifier: solution without a final answer", "train",
         train_on("sft_verifier", [{**GOOD_PROBLEM, "incorrect_solution": "I do not know."}]),
         "row 0, field incorrect_solution"),
    # ---- train.py, flags and config
    Case("--train-percentile 0", "train", train_flags("--train-percentile", "0"), "--train-percentile must be in (0, 100]"),
    Case("--test-percentile 101", "train", train_flags("--test-percentile", "101"), "--test-percentile must be in (0, 100]"),
    Case("--batch-size 0", "train", train_flags("--batch-size", "0"), "--batch-size must be at least 1"),
    Case("--max-length -5", "train", train_flags("--max-length", "-5"), "--max-length must be at least 2"),
    Case("--test-dataset-length 0", "train", train_flags("--test-dataset-length", "0"),
         "--test-dataset-length must be at least 1"),
    Case("--max-steps 0", "train", train_flags("--max-steps", "0"), "--max-steps must be positive or -1"),
    Case("--lambda with dpo", "train", train_flags("--training-type", "dpo", "--lambda", "0.5"),
         "--lambda only applies to --training-type sft_verifier"),
    Case("--beta with bt", "train", train_flags("--training-type", "bt", "--beta", "0.5"),
         "--beta only applies to --training-type dpo"),
    Case("--compile with --strategy fsdp", "train", train_flags("--compile", "--use-ray", "--strategy", "fsdp", "--use-gpu"),
         "--compile does not work with --strategy fsdp yet"),
    Case("YAML config with an unknown key", "train",
         yaml_config("learning_rate: 0.1\n"),
         "Config file {tmp}/c.yaml: unknown key 'learning_rate'"),
    Case("YAML config that is not a mapping", "train",
         yaml_config("- lr\n- 1\n"),
         "Config file {tmp}/c.yaml must hold a mapping"),
    Case("YAML config with a wrong type", "train",
         yaml_config("batch-size: many\n"),
         "Config file {tmp}/c.yaml: 'batch-size' has an invalid value 'many'"),
    Case("model folder without weights", "train",
         lambda tmp, s: ["--model-name", model_copy(tmp, drop=("model.safetensors",)), "--storage-path",
                         str(tmp / "runs"), *FAST],
         "Could not load the model '{tmp}/model'"),
    Case("tokenizer without a chat template", "train",
         lambda tmp, s: ["--model-name", model_copy(tmp, template=False), "--storage-path", str(tmp / "runs"), *FAST],
         "Tokenizer {tmp}/model has no chat template"),
    Case("model folder that does not exist", "train", train_flags("--model-name", "./no/such/model"),
         "Model folder ./no/such/model does not exist"),
    Case("s3:// storage without credentials (endpoint refuses)", "train",
         train_flags("--storage-path", "s3://bucket/runs", "--name", "x"), "s3://bucket/runs/x", env=REFUSED),
    Case("s3:// storage, endpoint refuses", "train",
         train_flags("--storage-path", "s3://bucket/runs", "--name", "x"), "Run folder s3://bucket/runs/x cannot be reached",
         env={**REFUSED, "AWS_ACCESS_KEY_ID": "fake-id", "AWS_SECRET_ACCESS_KEY": "fake-secret"}),
    Case("s3:// checkpoint without credentials (endpoint refuses)", "train",
         train_flags("--resume-from-checkpoint", "s3://bucket/runs/x"), "Checkpoint s3://bucket/runs/x cannot be reached",
         env=REFUSED),
    Case("corrupt .ckpt to resume", "train", lambda tmp, s: ["--resume-from-checkpoint", corrupt_ckpt(tmp), *FAST],
         "Checkpoint {tmp}/broken.ckpt cannot be read"),
    Case("checkpoint of another training type to resume", "train",
         lambda tmp, s: ["--training-type", "dpo", "--resume-from-checkpoint", str(s.sft_run), *FAST],
         "is a sft checkpoint; it cannot resume a dpo run"),
    # ---- upload_to_hub.py
    Case("upload: checkpoint does not exist", "upload_to_hub",
         upload("--output-dir", "x", ckpt=lambda tmp, s: str(tmp / "none.ckpt")), "Checkpoint {tmp}/none.ckpt does not exist"),
    Case("upload: corrupt .ckpt", "upload_to_hub", upload("--output-dir", "x", ckpt=lambda tmp, s: corrupt_ckpt(tmp)),
         "Checkpoint {tmp}/broken.ckpt cannot be read"),
    Case("upload: .ckpt not written by train.py", "upload_to_hub",
         upload("--output-dir", "x", ckpt=lambda tmp, s: foreign_ckpt(tmp)), "was not written by train.py"),
    Case("upload: --training-type mismatch", "upload_to_hub", upload("--output-dir", "x", "--training-type", "bt"),
         "is a sft checkpoint, not bt"),
    Case("upload: no destination", "upload_to_hub", upload(), "give --repo-id (upload) or --output-dir"),
    Case("upload: no HF_TOKEN", "upload_to_hub", upload("--repo-id", "me/x"), "HF_TOKEN is not set",
         env={"HF_TOKEN": None}),
    # ---- infer.py
    Case("infer: no prompt column", "infer", infer_on([{"text": "hi"}]), "has no column 'messages or prompt'"),
    Case("infer: empty prompt", "infer", infer_on([{"prompt": "What?"}, {"prompt": "  "}]),
         "row 1, field prompt: empty prompt"),
    Case("infer: unknown role", "infer", infer_on([messages({"role": "robot", "content": "hi"})]),
         "row 0, field messages[0].role: unknown role 'robot'"),
    Case("infer: --limit 0", "infer", infer_on(None, "--limit", "0"), "--limit must be at least 1"),
    Case("infer: model folder without weights", "infer",
         lambda tmp, s: ["--model", model_copy(tmp, drop=("model.safetensors",)), "--output", str(tmp / "o.jsonl"),
                         "--limit", "1"], "Could not load the model '{tmp}/model'"),
    # ---- evaluate.py
    Case("evaluate: --num-prompts 0", "evaluate", evaluate_on(None, "--num-prompts", "0"),
         "--num-prompts must be at least 1"),
    Case("evaluate: bad row", "evaluate", evaluate_on([messages(USER, {"role": "assistant", "content": ""})]),
         "row 0, field messages[1].content: empty content"),
    Case("evaluate: --judge without --reference-model", "evaluate", evaluate_on(None, "--judge", "length"),
         "win rate needs both --reference-model and --judge"),
    # ---- extension/data_preparation.py
    Case("data_preparation: truncated zip", "data_preparation", prep(b'{"inputs": "x"}\n', truncate=True),
         "rm_correct_solutions_batch_00.zip is not a readable zip file"),
    Case("data_preparation: line that is not JSON", "data_preparation", prep(b"{oops\n"),
         "rm_correct_solutions_batch_00.zip, line 1: not valid JSON"),
    Case("data_preparation: non-UTF-8 bytes", "data_preparation", prep(b'{"inputs": "caf\xe9"}\n'),
         "rm_correct_solutions_batch_00.jsonl is not UTF-8 text"),
    Case("data_preparation: empty folder", "data_preparation",
         lambda tmp, s: ["--path", str((tmp / "empty").mkdir() or tmp / "empty"), "--output-dir", str(tmp / "o")],
         "Input folder {tmp}/empty is empty"),
    # ---- extension/verify.py
    Case("verify: line that is not JSON", "verify", verify_on(b'{"question": "q", "solution": "s"}\n{nope\n'),
         "{tmp}/rows.jsonl, row 1: not valid JSON"),
    Case("verify: missing solution", "verify", verify_on(b'{"question": "q"}\n'),
         "{tmp}/rows.jsonl, row 0, field solution: expected a non-empty string"),
    Case("verify: empty file", "verify", verify_on(b""), "{tmp}/rows.jsonl holds no rows"),
    Case("verify: non-UTF-8 bytes", "verify", verify_on(b'{"question": "caf\xe9", "solution": "s"}\n'),
         "{tmp}/rows.jsonl, row 0: not UTF-8 text"),
    Case("verify: --k-min 0", "verify", verify_on(b'{"question": "q", "solution": "s"}\n', "--k-min", "0"),
         "--k-min, --k-max, --step and --fixed-k must be at least 1"),
]


def entry_point(name: str):
    import importlib
    module = {"data_preparation": "extension.data_preparation", "verify": "extension.verify"}.get(name, name)
    return importlib.import_module(module).main


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory) -> Path:
    """A finished one-step SFT run folder."""
    import train
    runs = tmp_path_factory.mktemp("runs")
    assert train.main(["--storage-path", str(runs), "--name", "sft", "--train-dataset-length", "4",
                       "--test-dataset-length", "2", *FAST]) == 0
    return runs / "sft"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_malformed_input(case, tmp_path, monkeypatch, capsys, caplog, request):
    for key, value in case.env.items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value.replace("{tmp}", str(tmp_path)))
    monkeypatch.chdir(tmp_path)
    argv = case.build(tmp_path, Shared(request))
    caplog.set_level(logging.INFO)
    code = entry_point(case.entry)(argv)
    captured = capsys.readouterr()
    phrase = case.phrase.replace("{tmp}", str(tmp_path))
    assert code == case.code, captured.err
    assert "Traceback" not in captured.err
    if case.code == 0:               # a counted skip: said in the log, the run went on
        assert phrase in caplog.text, caplog.text
        return
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert phrase in lines[0], lines[0]


def test_readme_table_lists_every_case():
    section = (REPO / "docs" / "data.md").read_text().split("\n## Bad input\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")][2:]      # after the header rows
    assert [row.split(" | ")[0][2:].strip("` ") for row in rows] == [c.name for c in CASES]
    assert len(CASES) >= 30 and len({c.entry for c in CASES}) == 6
