"""extension/data_preparation.py: the GenRM critiques become one chat data set whose rows match
the zips line for line, that survives save_to_disk, and that the trainer's loader reads.

The real folder is read once per module (its rm_*_batch_00 zips hold about 20,000 lines): once
by the script (in memory, and through main --output-dir), once independently by the test."""
import json
import shutil
import socket
import zipfile
from collections import Counter

import pytest

from conftest import SHARED_DATA
from extension import data_preparation as dp

CRITIQUES = SHARED_DATA / "genrm-critiques" / "critiques"
ANSWER = "\nA: Let's think step by step.\n"
INSTRUCTION = ('Solve the math problems and provide step-by-step solutions, ending with "The answer is '
               '[Insert Final Answer Here]".\n\n')


def write_zip(folder, name: str, lines: list[str]):
    """A zip as upstream makes them: one .jsonl named after the zip."""
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / name, "w") as z:
        z.writestr(name[:-len(".zip")] + ".jsonl", "".join(line + "\n" for line in lines))
    return folder / name


def record(mode: str = "direct", label: str = "Yes", qid: int = 7,
           solution: str = "2 + 2 = 4. The answer is 4.") -> str:
    """One upstream line (a JSON string) asking whether `solution` to "What is 2 + 2?" is right."""
    cue = "Let's verify step by step.\n" if mode == "cot" else "Is the answer correct (Yes/No)?"
    target = (f"Step 1: 2 + 2 = 4 is right.\n\nVerification: Is the answer correct (Yes/No)? {label}"
              if mode == "cot" else f" {label}")
    return json.dumps({"inputs": f"{INSTRUCTION}Q: What is 2 + 2?{ANSWER}{solution}\nVerification: {cue}",
                       "targets": target, "question_id": qid, "model_output_id": 0})


def solution_of(inputs: str) -> str:
    return inputs.split(ANSWER, 1)[1].rsplit("\nVerification:", 1)[0].strip()


def file_kind(name: str) -> tuple[str, str, str]:
    """(split, mode, correct|incorrect) from a file name, written out independently of the script."""
    parts = name[:-len(".zip")].split("_")
    return ("test" if parts[-1] == "val" else "train", "cot" if parts[0] == "critiques" else "direct", parts[1])


@pytest.fixture(scope="module")
def real_files() -> dict:
    """File name -> its records, read straight from the zips."""
    files = {}
    for path in sorted(CRITIQUES.glob("*.zip")):
        with zipfile.ZipFile(path) as z:
            text = z.read(path.stem + ".jsonl").decode("utf-8")
        files[path.name] = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert files, f"no zips in {CRITIQUES}"
    return files


@pytest.fixture(scope="module")
def built():
    """(DatasetDict, Summary, {split: rows as dicts}): iterating Arrow rows once, not per test."""
    dataset, summary = dp.build_dataset(str(CRITIQUES))
    return dataset, summary, {split: ds.to_list() for split, ds in dataset.items()}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "genrm"
    assert dp.main(["--path", str(CRITIQUES), "--output-dir", str(out)]) == 0
    return out


def rows(splits: dict) -> list[dict]:
    return [row for split_rows in splits.values() for row in split_rows]


# ---------------------------------------------------------------------- the real folder
def test_row_counts_per_split_and_task_match_the_files(built, real_files):
    dataset, summary, splits = built
    expected = Counter()
    distinct = {}
    for name, records in real_files.items():
        split, mode, correct = file_kind(name)
        expected[(split, "verify", mode)] += len(records)
        if correct == "correct":
            distinct.setdefault(split, set()).update((r["question_id"], solution_of(r["inputs"])) for r in records)
    for split, pairs in distinct.items():
        expected[(split, "generate", None)] = len(pairs)
    got = Counter((split, row["task"], row["mode"]) for split, split_rows in splits.items() for row in split_rows)
    assert got == expected
    assert set(dataset) == {split for split, _, _ in expected}
    assert sorted(name for name, _, _ in summary.files) == sorted(real_files)


def test_verify_rows_are_the_lines_without_the_instruction(built, real_files):
    _, _, splits = built
    by_file = {}
    for row in rows(splits):
        if row["task"] == "verify":
            by_file.setdefault(row["source_file"], []).append(row)
    assert set(by_file) == set(real_files)
    for name, records in real_files.items():
        assert len(by_file[name]) == len(records)
        for row, r in zip(by_file[name], records):
            prompt = row["messages"][0]["content"]
            assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
            assert prompt == r["inputs"][r["inputs"].index("Q: "):].rstrip()
            assert prompt.startswith("Q: ") and "Solve the math problems" not in prompt
            assert row["messages"][1]["content"] == r["targets"].strip()
            assert row["question_id"] == r["question_id"]


def test_targets_end_with_their_label(built):
    _, summary, splits = built
    verify = [row for row in rows(splits) if row["task"] == "verify"]
    for row in verify:
        prompt, target = row["messages"][0]["content"], row["messages"][1]["content"]
        assert row["label"] in ("Yes", "No")
        if row["mode"] == "cot":
            assert prompt.endswith("\nVerification: Let's verify step by step.")
            assert target.endswith(f"Verification: Is the answer correct (Yes/No)? {row['label']}")
        else:
            assert row["mode"] == "direct"
            assert prompt.endswith("\nVerification: Is the answer correct (Yes/No)?")
            assert target == row["label"]
    # Upstream's labels all agree with their file's kind; the summary counts any that would not.
    disagreeing = [row for row in verify
                   if row["label"] != ("Yes" if file_kind(row["source_file"])[2] == "correct" else "No")]
    assert len(disagreeing) == sum(summary.label_disagreements.values()) == 0


def test_generate_rows_are_the_distinct_correct_solutions(built, real_files):
    dataset, summary, splits = built
    problems = {r["question_id"]: r["inputs"].split("Q: ", 1)[1].split("\nA:", 1)[0].strip()
                for records in real_files.values() for r in records}
    for split, split_rows in splits.items():
        generate = [row for row in split_rows if row["task"] == "generate"]
        assert all(file_kind(row["source_file"])[2] == "correct" and file_kind(row["source_file"])[0] == split
                   for row in generate)
        assert all(row["label"] is None and row["mode"] is None for row in generate)
        pairs = [(row["question_id"], row["messages"][1]["content"]) for row in generate]
        correct_files = [name for name in real_files
                         if file_kind(name)[0] == split and file_kind(name)[2] == "correct"]
        expected = {(r["question_id"], solution_of(r["inputs"]))
                    for name in correct_files for r in real_files[name]}
        assert len(pairs) == len(set(pairs)) and set(pairs) == expected
        assert all(row["messages"][0]["content"] == problems[row["question_id"]] for row in generate)
    lines = sum(len(records) for name, records in real_files.items() if file_kind(name)[2] == "correct")
    assert summary.repeated_solutions == lines - sum(summary.rows[(s, "generate", None)] for s in dataset)


def test_main_round_trips_through_save_to_disk(built, saved, capsys):
    import datasets
    dataset, _, splits = built
    loaded = datasets.load_from_disk(str(saved))
    assert list(loaded) == list(dataset)
    for split in dataset:
        assert loaded[split].features == dataset[split].features
        assert loaded[split].to_list() == splits[split]
    assert not [p for p in saved.parent.iterdir() if p.name.startswith(".data-preparation-")]


def test_the_trainer_loads_the_saved_folder(saved):
    from custom_dataset import CustomDataset
    for split in ("train", "test"):
        data = CustomDataset(str(saved), split, "sft")
        assert len(data) > 0
        assert all([m["role"] for m in row["messages"]] == ["user", "assistant"] for row in data.rows)


# ---------------------------------------------------------------------- any subset
def test_a_single_val_file_gives_only_a_test_split(tmp_path, capsys):
    import datasets
    folder = tmp_path / "critiques"
    folder.mkdir()
    shutil.copy(CRITIQUES / "rm_correct_solutions_batch_08_val.zip", folder)
    assert dp.main(["--path", str(folder), "--output-dir", str(tmp_path / "out")]) == 0
    loaded = datasets.load_from_disk(str(tmp_path / "out"))
    assert list(loaded) == ["test"]
    assert Counter((r["task"], r["mode"]) for r in loaded["test"]) == {("verify", "direct"): 125,
                                                                      ("generate", None): 125}
    out = capsys.readouterr().out
    assert "rm_correct_solutions_batch_08_val.zip" in out and "Saved to" in out


def test_unrecognised_files_are_skipped_and_logged(tmp_path, caplog):
    folder = tmp_path / "critiques"
    write_zip(folder, "rm_correct_solutions_batch_03.zip", [record()])
    (folder / "NOTES.txt").write_text("not data")
    dataset, summary = dp.build_dataset(str(folder))
    assert list(dataset) == ["train"] and len(dataset["train"]) == 2
    assert "NOTES.txt" in caplog.text


def test_the_same_solution_in_two_files_is_one_generate_row(tmp_path):
    folder = tmp_path / "critiques"
    write_zip(folder, "critiques_correct_solutions_batch_03.zip", [record("cot")])
    write_zip(folder, "rm_correct_solutions_batch_03.zip", [record(), record(qid=8)])
    dataset, summary = dp.build_dataset(str(folder))
    generate = [r for r in dataset["train"] if r["task"] == "generate"]
    assert [(r["question_id"], r["source_file"]) for r in generate] == [
        (7, "critiques_correct_solutions_batch_03.zip"), (8, "rm_correct_solutions_batch_03.zip")]
    assert generate[0]["messages"] == [{"role": "user", "content": "What is 2 + 2?"},
                                       {"role": "assistant", "content": "2 + 2 = 4. The answer is 4."}]
    assert summary.repeated_solutions == 1


def test_a_label_against_its_file_is_counted_not_fatal(tmp_path, capsys):
    folder = tmp_path / "critiques"
    write_zip(folder, "rm_incorrect_solutions_batch_03.zip", [record(label="No"), record(label="Yes", qid=8)])
    assert dp.main(["--path", str(folder), "--output-dir", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "(correct -> Yes, incorrect -> No): 1 (rm_incorrect_solutions_batch_03.zip: 1)" in out


# ---------------------------------------------------------------------- pure parsing
def test_parse_inputs_splits_problem_solution_and_cue():
    # A "Verification:" inside the solution is the solution's; only the last line is the cue.
    solution = "Step one.\n\nVerification: mine. The answer is 4."
    for mode, cue in (("cot", dp.COT_CUE), ("direct", dp.DIRECT_CUE)):
        inputs = json.loads(record(mode, solution=solution))["inputs"]
        assert dp.parse_inputs(inputs) == ("What is 2 + 2?", solution, cue)
        assert dp.verification_prompt(inputs).startswith("Q: What is 2 + 2?\nA: Let's think step by step.\n")
        assert dp.verification_prompt(inputs).endswith("\n" + cue)


@pytest.mark.parametrize("inputs, message", [
    ("Solve it.\n\nWhat is 2 + 2?\nA: Let's think step by step.\n4\nVerification: Let's verify step by step.\n",
     "no line starts with 'Q: '"),
    ("Q: What is 2 + 2?\n4\nVerification: Is the answer correct (Yes/No)?", "no \"A: Let's think"),
    ("Q: What is 2 + 2?\nA: Let's think step by step.\n4\nIs it right?", "does not end with"),
    ("Q: What is 2 + 2?\nA: Let's think step by step.\n\nVerification: Is the answer correct (Yes/No)?",
     "empty solution"),
])
def test_parse_inputs_names_what_is_missing(inputs, message):
    with pytest.raises(ValueError, match="field 'inputs'") as e:
        dp.parse_inputs(inputs)
    assert message in str(e.value)


def test_parse_label():
    assert dp.parse_label(" Yes", "direct") == "Yes" and dp.parse_label(" No\n", "direct") == "No"
    twice = ("Verification: Is the answer correct (Yes/No)? Yes, step 1 holds.\n\n"
             "Verification: Is the answer correct (Yes/No)? No")
    assert dp.parse_label(twice, "cot") == "No"
    for target, mode in ((" yes", "direct"), (" Yes.", "direct"), ("All good. Yes", "cot"),
                         ("Verification: Is the answer correct (Yes/No)? Maybe", "cot")):
        with pytest.raises(ValueError, match="field 'targets'"):
            dp.parse_label(target, mode)


def test_classify_file_names():
    assert dp.classify("/x/critiques_incorrect_solutions_batch_16_val.zip") == dp.SourceFile(
        "/x/critiques_incorrect_solutions_batch_16_val.zip", "cot", False, "test")
    assert dp.classify("rm_correct_solutions_batch_00.zip") == dp.SourceFile(
        "rm_correct_solutions_batch_00.zip", "direct", True, "train")
    for name in ("rm_correct_solutions_batch_00.jsonl", "critiques_right_solutions_batch_01.zip", "README.md"):
        assert dp.classify(name) is None


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize("case", ["empty", "unrelated", "missing"])
def test_a_folder_without_upstream_files_is_one_sentence(tmp_path, capsys, case):
    folder = tmp_path / "critiques"
    if case != "missing":
        folder.mkdir()
    if case == "unrelated":
        (folder / "notes.zip").write_bytes(b"")
    assert dp.main(["--path", str(folder), "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert str(folder) in err and "rm_{correct,incorrect}_solutions_batch_NN[_val].zip" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("line, where", [
    ("{not json", "line 2: not valid JSON"),
    (json.dumps({"inputs": "Q: x", "question_id": 1, "model_output_id": 0}), "line 2, field 'targets'"),
    (json.dumps({"inputs": "Q: x", "targets": " Yes", "question_id": "1", "model_output_id": 0}),
     "line 2, field 'question_id'"),
    (record(label="Perhaps"), "line 2, field 'targets'"),
    (record("cot"), "line 2, field 'inputs'"),  # a CoT row in a direct (rm_) file
])
def test_a_malformed_line_names_file_line_and_field(tmp_path, capsys, line, where):
    folder = tmp_path / "critiques"
    path = write_zip(folder, "rm_correct_solutions_batch_03_val.zip", [record(), line])
    assert dp.main(["--path", str(folder), "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{path}, {where}" in err
    assert not (tmp_path / "out").exists()


def test_an_output_folder_that_is_not_a_data_set_is_left_alone(tmp_path, capsys):
    folder = tmp_path / "critiques"
    write_zip(folder, "rm_correct_solutions_batch_03.zip", [record()])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    assert dp.main(["--path", str(folder), "--output-dir", str(tmp_path / "out")]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]
    # An earlier data set there is replaced.
    shutil.rmtree(tmp_path / "out")
    assert dp.main(["--path", str(folder), "--output-dir", str(tmp_path / "out")]) == 0
    write_zip(folder, "rm_correct_solutions_batch_04.zip", [record(qid=9)])
    assert dp.main(["--path", str(folder), "--output-dir", str(tmp_path / "out")]) == 0
    import datasets
    assert len(datasets.load_from_disk(str(tmp_path / "out"))["train"]) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["critiques", "out"]


def test_neither_repo_nor_output_dir_is_an_error(capsys):
    assert dp.main(["--path", str(CRITIQUES)]) == 2
    assert "--repo" in capsys.readouterr().err


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the script tried to reach the network")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_repo_without_hf_token_fails_before_any_work(tmp_path, capsys, monkeypatch, no_network):
    import datasets
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(datasets.DatasetDict, "push_to_hub", lambda *a, **k: pytest.fail("pushed"))
    assert dp.main(["--path", str(CRITIQUES), "--repo", "me/genrm", "--output-dir", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == ("error: HF_TOKEN is not set; export a Hugging Face write token to push "
                                    "to me/genrm.")
    assert captured.out == "" and not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, private", [([], True), (["--public"], False)])
def test_repo_pushes_with_the_token_from_the_environment(tmp_path, capsys, monkeypatch, no_network, flags,
                                                         private):
    import datasets
    calls = []
    monkeypatch.setattr(datasets.DatasetDict, "push_to_hub",
                        lambda self, repo, **kw: calls.append((repo, kw, list(self))))
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token")
    folder = tmp_path / "critiques"
    write_zip(folder, "critiques_correct_solutions_batch_03_val.zip", [record("cot")])
    assert dp.main(["--path", str(folder), "--repo", "me/genrm", *flags]) == 0
    assert calls == [("me/genrm", {"private": private, "token": "hf_fake_token"}, ["test"])]
    assert "hf_fake_token" not in capsys.readouterr().out
