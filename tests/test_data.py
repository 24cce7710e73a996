"""custom_dataset.py: loading, format adapters, filters and bad-input sentences."""
import gzip
import json

import pytest

from conftest import HH_RLHF, write_jsonl
from custom_dataset import CustomDataset, DataError, hh_transcript_to_messages


def chat_rows(n=100):
    """Row i: user "q", assistant "x" * (i + 1). Its string length is
    len("user") + len("q") + len("assistant") + (i + 1) + len(source) = 15 + i + 1."""
    return [{"messages": [{"role": "user", "content": "q"},
                          {"role": "assistant", "content": "x" * (i + 1)}],
             "source": "a" if i % 2 else "b"} for i in range(n)]


def replies(ds):
    return [len(r["messages"][1]["content"]) - 1 for r in ds]   # back to the row number i


@pytest.fixture
def folder(tmp_path):
    write_jsonl(tmp_path / "d" / "train.jsonl", chat_rows())
    write_jsonl(tmp_path / "d" / "test.jsonl", chat_rows(10))
    return str(tmp_path / "d")


def test_percentile_98_drops_longest_2_percent(folder):
    # Lengths 16..115; the 98th percentile is 16 + 0.98 * 99 = 113.02, so rows 0..97 stay.
    ds = CustomDataset(folder, "train", "sft", percentile=98)
    assert replies(ds) == list(range(98))


def test_percentile_tiny_keeps_shortest(folder):
    ds = CustomDataset(folder, "train", "sft", percentile=0.1)      # threshold 16.099
    assert replies(ds) == [0]


def test_source_filter(folder):
    ds = CustomDataset(folder, "train", "sft", source="a")
    assert replies(ds) == list(range(1, 100, 2))
    with pytest.raises(DataError, match="no rows with source 'zzz'"):
        CustomDataset(folder, "train", "sft", source="zzz")


def test_length_cap_first_rows_and_seeded_random_sample(folder):
    assert replies(CustomDataset(folder, "train", "sft", length=5)) == [0, 1, 2, 3, 4]
    a = replies(CustomDataset(folder, "train", "sft", length=10, random_sample=True, seed=1))
    b = replies(CustomDataset(folder, "train", "sft", length=10, random_sample=True, seed=1))
    c = replies(CustomDataset(folder, "train", "sft", length=10, random_sample=True, seed=2))
    assert a == b and a != c and a != list(range(10))
    assert a == sorted(a) and len(set(a)) == 10


def test_filters_compose_in_order(folder):
    # source "a" = odd rows; 50th percentile of their lengths keeps the shorter half; then 3 rows.
    ds = CustomDataset(folder, "train", "sft", source="a", percentile=50, length=3)
    assert replies(ds) == [1, 3, 5]
    assert (ds.stats.source_rows, ds.stats.after_source, ds.stats.after_percentile) == (100, 50, 25)


def test_single_file_gets_a_fixed_heldout_split(tmp_path):
    path = write_jsonl(tmp_path / "all.jsonl", chat_rows())
    train = replies(CustomDataset(str(path), "train", "sft"))
    test = replies(CustomDataset(str(path), "test", "sft"))
    assert len(test) == 10 and len(train) == 90
    assert sorted(train + test) == list(range(100))
    assert test == replies(CustomDataset(str(path), "test", "sft", seed=7))   # not tied to --seed


def test_gz_csv_parquet_and_save_to_disk(tmp_path):
    import datasets
    rows = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(20)]
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    datasets.Dataset.from_list(rows).to_csv(str(tmp_path / "a.csv"))
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "a.parquet"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:15]),
                          "test": datasets.Dataset.from_list(rows[15:])}).save_to_disk(str(tmp_path / "disk"))
    for name in ("a.jsonl.gz", "a.csv", "a.parquet"):
        ds = CustomDataset(str(tmp_path / name), "train", "sft")
        assert len(ds) == 18
        assert ds[0]["messages"][0]["role"] == "user"
    ds = CustomDataset(str(tmp_path / "disk"), "test", "sft")
    assert [r["messages"][1]["content"] for r in ds] == ["c15", "c16", "c17", "c18", "c19"]


def test_preference_split_names(tmp_path):
    def pref(i):
        prompt = [{"role": "user", "content": f"q{i}"}]
        return {"prompt": f"q{i}", "chosen": prompt + [{"role": "assistant", "content": "good"}],
                "rejected": prompt + [{"role": "assistant", "content": "bad"}]}
    write_jsonl(tmp_path / "p" / "train_prefs.jsonl", [pref(i) for i in range(6)])
    write_jsonl(tmp_path / "p" / "test_prefs.jsonl", [pref(i) for i in range(6, 8)])
    ds = CustomDataset(str(tmp_path / "p"), "test", "dpo")
    assert [r["prompt"] for r in ds] == [[{"role": "user", "content": "q6"}], [{"role": "user", "content": "q7"}]]
    assert ds[0]["chosen"] == [{"role": "assistant", "content": "good"}]


def test_hh_rlhf_transcripts_convert_to_messages():
    ds = CustomDataset(str(HH_RLHF), "train", "dpo", skip_bad_rows=True)
    test = CustomDataset(str(HH_RLHF), "test", "dpo", skip_bad_rows=True)
    # 1600 rows, 160 held out; 4 transcripts end in an empty reply and one pair (row 1254)
    # diverges before its last turn: 5 skipped in all, across the two splits.
    assert ds.stats.source_rows == 1440 and test.stats.source_rows == 160
    assert ds.stats.skipped_bad_rows + test.stats.skipped_bad_rows == 5
    assert len(ds) + len(test) == 1595
    for row in ds:
        assert row["prompt"][0]["role"] == "user" and row["prompt"][-1]["role"] == "user"
        assert row["chosen"][0]["role"] == row["rejected"][0]["role"] == "assistant"
    # Chosen and rejected share the prompt and differ in the last assistant turn.
    assert sum(r["chosen"] != r["rejected"] for r in ds) >= 0.95 * len(ds)
    sft = CustomDataset(str(HH_RLHF), "train", "sft", length=5)
    assert all(r["messages"][-1]["role"] == "assistant" for r in sft)


def test_hh_rlhf_bad_rows_are_named_without_skip():
    with pytest.raises(DataError, match=r"row 86, field chosen\[3\]\.content: empty content \(--skip-bad-rows"):
        CustomDataset(str(HH_RLHF), "train", "dpo")



def test_hh_pair_diverging_before_last_turn_is_named(tmp_path):
    rows = [json.loads(line) for line in gzip.open(HH_RLHF, "rt")]
    write_jsonl(tmp_path / "hh" / "test.jsonl", [rows[0], rows[1], rows[1254], rows[2]])
    with pytest.raises(DataError, match=r"row 2, field chosen/rejected: the two conversations have different prompts"):
        CustomDataset(str(tmp_path / "hh"), "test", "dpo")


def test_hh_transcript_parser():
    text = "\n\nHuman: hi there\n\nAssistant: hello\n\nHuman: 2+2?\n\nAssistant: 4"
    assert hh_transcript_to_messages(text) == [
        {"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]


@pytest.mark.parametrize("row, message", [
    ({"text": "x"}, r"row 1, field missing column: expected 'messages'"),
    ({"messages": [{"role": "bot", "content": "x"}]}, r"row 1, field messages\[0\]\.role: unknown role 'bot'"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]},
     r"row 1, field messages\[1\]\.content: empty content"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": 5}]},
     r"row 1, field messages\[1\]\.content: expected a string, got int"),
    ({"messages": [{"role": "user", "content": "q"}]}, r"row 1, field messages: the conversation has no assistant turn"),
])
def test_bad_rows_name_data_set_row_and_field(tmp_path, row, message):
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [good, row, good]) + "\n")
    with pytest.raises(DataError, match=message) as info:
        CustomDataset(str(path), "train", "sft", length=3)
    assert str(path) in str(info.value)


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        CustomDataset(str(tmp_path / "nope.jsonl"), "train", "sft")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no data files"):
        CustomDataset(str(tmp_path / "empty"), "train", "sft")


PROMPT_MSG = {"role": "user", "content": "2+2?"}


@pytest.mark.parametrize("row, message", [
    ({"chosen": [PROMPT_MSG, {"role": "assistant", "content": "4"}]}, r"row 1, field rejected: missing column"),
    ({"chosen": [PROMPT_MSG, {"role": "user", "content": "4"}], "rejected": [PROMPT_MSG, {"role": "assistant", "content": "5"}]},
     r"row 1, field chosen: the last message is not an assistant message"),
    ({"chosen": [PROMPT_MSG, {"role": "assistant", "content": "4"}],
      "rejected": [{"role": "user", "content": "3+3?"}, {"role": "assistant", "content": "5"}]},
     r"row 1, field chosen/rejected: the two conversations have different prompts"),
])
def test_bad_preference_rows_name_the_row(tmp_path, row, message):
    good = {"chosen": [PROMPT_MSG, {"role": "assistant", "content": "4"}],
            "rejected": [PROMPT_MSG, {"role": "assistant", "content": "5"}]}
    path = tmp_path / "prefs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [good, row, good]) + "\n")
    for training_type in ("dpo", "bt"):
        with pytest.raises(DataError, match=message) as info:
            CustomDataset(str(path), "train", training_type, length=3)
        assert str(path) in str(info.value)
