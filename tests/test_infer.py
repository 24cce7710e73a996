"""infer.py: the transformers backend on the embedded model writes the expected JSONL; greedy
output is deterministic and the same under left padding as one prompt at a time; beam search
returns the configured number of beams; vLLM asked for and missing, and bad input, end in
one sentence."""
import json
import sys

import pytest

import infer
from tokenization import render
from conftest import EMBEDDED_MODEL, write_jsonl
from generation import generate_completions, generate_replies

QUESTIONS = ["Tom has 5 apples and eats 2. How many are left?",
             "A farmer has 12 cows, sells 4, then buys 9 more and gives 3 to a neighbour. How many cows now?",
             "What is 7 + 8?"]
FAST = ["--model", str(EMBEDDED_MODEL), "--max-new-tokens", "12"]


@pytest.fixture(scope="module")
def model_and_tokenizer():
    from models import load_trained
    return load_trained(str(EMBEDDED_MODEL))


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_transformers_backend_writes_the_expected_jsonl(tmp_path, model_and_tokenizer, capsys):
    model, tokenizer = model_and_tokenizer
    data = write_jsonl(tmp_path / "q.jsonl", [{"question": q, "id": i} for i, q in enumerate(QUESTIONS)])
    out = tmp_path / "replies.jsonl"
    assert infer.main([*FAST, "--input", str(data), "--prompt-column", "question", "--output", str(out),
                       "--backend", "transformers", "--batch-size", "2"]) == 0
    rows = read(out)
    assert [(r["index"], r["sequence"]) for r in rows] == [(0, 0), (1, 0), (2, 0)]
    prompts = [[{"role": "user", "content": q}] for q in QUESTIONS]
    expected = generate_replies(model, tokenizer, prompts, max_new_tokens=12, batch_size=1)
    for row, prompt, reply in zip(rows, prompts, expected):
        assert row["prompt"] == prompt and row["completion"] == reply
        assert row["prompt_tokens"] == len(tokenizer(render(tokenizer, prompt, add_generation_prompt=True),
                                                     add_special_tokens=False)["input_ids"])
        assert 1 <= row["completion_tokens"] <= 12 and row["finish_reason"] in ("stop", "length")
        assert (row["finish_reason"] == "length") == (row["completion_tokens"] == 12)
        assert row["backend"] == "transformers" and row["model"] == str(EMBEDDED_MODEL) and "reference" not in row
        assert row["sampling"] == {"temperature": 0.0, "top_p": 1.0, "num_beams": 1, "length_penalty": 1.0,
                                   "num_return_sequences": 1, "max_new_tokens": 12, "seed": 42}
    assert not list(tmp_path.glob("*.tmp-*"))          # written whole, then moved into place
    assert "3 completions of 3 prompts" in capsys.readouterr().out


def test_chat_rows_keep_the_reference_and_the_submission_preset(tmp_path):
    out = tmp_path / "r.jsonl"
    # The bundled SFT data's test split: conversations whose last assistant turn is the reference.
    assert infer.main([*FAST, "--limit", "2", "--preset", "submission", "--output", str(out)]) == 0
    rows = read(out)
    assert len(rows) == 2 and all(r["prompt"][-1]["role"] == "user" and "The answer is" in r["reference"]
                                  for r in rows)
    assert rows[0]["sampling"]["temperature"] == 0.6 and rows[0]["sampling"]["top_p"] == 0.95
    # Sampling with a seed: the same file twice; several sequences per prompt on request.
    first = out.read_text()
    assert infer.main([*FAST, "--limit", "2", "--preset", "submission", "--output", str(out)]) == 0
    assert out.read_text() == first
    assert infer.main([*FAST, "--limit", "2", "--preset", "submission", "--num-return-sequences", "3",
                       "--output", str(out)]) == 0
    assert [(r["index"], r["sequence"]) for r in read(out)] == [(i, s) for i in range(2) for s in range(3)]


def test_greedy_is_deterministic_and_left_padding_changes_nothing(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prompts = [[{"role": "user", "content": q}] for q in QUESTIONS]    # lengths differ: padding in a batch
    one_by_one = [o[0] for o in generate_completions(model, tokenizer, prompts, max_new_tokens=20, batch_size=1)]
    batched = [o[0] for o in generate_completions(model, tokenizer, prompts, max_new_tokens=20, batch_size=3)]
    again = [o[0] for o in generate_completions(model, tokenizer, prompts, max_new_tokens=20, batch_size=3)]
    assert batched == one_by_one == again
    assert len({c.prompt_tokens for c in batched}) == 3 and all(c.text for c in batched)


def test_beam_search_returns_every_beam(tmp_path, model_and_tokenizer):
    out = tmp_path / "beams.jsonl"
    data = write_jsonl(tmp_path / "q.jsonl", [{"prompt": q} for q in QUESTIONS[:2]])
    assert infer.main([*FAST, "--input", str(data), "--preset", "beam", "--output", str(out)]) == 0
    rows = read(out)
    assert [(r["index"], r["sequence"]) for r in rows] == [(i, s) for i in range(2) for s in range(4)]
    assert rows[0]["sampling"]["num_beams"] == 4 and rows[0]["sampling"]["length_penalty"] == 0.9
    for i in range(2):
        assert len({r["completion"] for r in rows if r["index"] == i}) == 4      # four different beams
    # The best beam is what generate gives with the same settings and one sequence.
    model, tokenizer = model_and_tokenizer
    best = generate_completions(model, tokenizer, [[{"role": "user", "content": QUESTIONS[0]}]], max_new_tokens=12,
                                num_beams=4, length_penalty=0.9)[0]
    assert len(best) == 1 and best[0].text == rows[0]["completion"]
    assert infer.main([*FAST, "--input", str(data), "--preset", "beam", "--num-return-sequences", "2",
                       "--output", str(out)]) == 0
    assert [r["sequence"] for r in read(out)] == [0, 1, 0, 1]


def test_vllm_missing_is_one_sentence(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "vllm", None)        # as on a machine without it
    assert infer.main([*FAST, "--backend", "vllm", "--output", str(tmp_path / "x.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {infer.VLLM_MISSING}\n" and "--backend vllm needs the vllm package" in err
    assert not (tmp_path / "x.jsonl").exists()
    assert infer.choose_backend("auto") == "transformers"


@pytest.mark.parametrize("case", ["missing file", "empty file", "missing column", "bad row", "bad flags",
                                  "greedy sequences"])
def test_bad_input_is_one_sentence(tmp_path, capsys, case):
    argv = [*FAST, "--output", str(tmp_path / "x.jsonl")]
    if case == "missing file":
        argv += ["--input", str(tmp_path / "nope.jsonl")]
        expected = f"Data set path {tmp_path / 'nope.jsonl'} does not exist."
    elif case == "empty file":
        (tmp_path / "empty.jsonl").write_text("")
        argv += ["--input", str(tmp_path / "empty.jsonl")]
        expected = f"Data file {tmp_path / 'empty.jsonl'} is empty."
    elif case == "missing column":
        argv += ["--input", str(write_jsonl(tmp_path / "q.jsonl", [{"question": "hi"}])), "--prompt-column", "text"]
        expected = "has no column 'text' (columns: question); name one with --prompt-column."
    elif case == "bad row":
        argv += ["--input", str(write_jsonl(tmp_path / "q.jsonl", [{"prompt": "hi"}, {"prompt": " "}]))]
        expected = "(train), row 1, field prompt: empty prompt."
    elif case == "greedy sequences":
        argv += ["--num-return-sequences", "2"]
        expected = "Greedy decoding gives one sequence per prompt"
    else:
        argv += ["--preset", "beam", "--temperature", "0.7"]
        expected = "Beam search is deterministic: use --temperature 0 with --num-beams above 1."
    assert infer.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.jsonl").exists()
