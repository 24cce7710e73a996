"""Bradley-Terry reward models end to end: a bt run on the bundled preference pairs learns to
rank the correct solution above the one with a slip; the export loads with
AutoModelForSequenceClassification and judges; real hh-rlhf transcripts train."""
import pytest
import torch

import errors
import flags
import train
import upload_to_hub
from collate_functions import PreferenceCollator
from conftest import HH_RLHF, read_scalars

PAIR = [{"role": "user", "content": "Tom has 12 apples and eats 5. How many are left?"}]


def scalars(run_dir):
    return read_scalars(run_dir / "tensorboard")


@pytest.fixture(scope="module")
def bt_run(tmp_path_factory):
    storage = tmp_path_factory.mktemp("runs")
    assert train.main(["--training-type", "bt", "--storage-path", str(storage), "--name", "bt", *BT_FLAGS]) == 0
    return storage / "bt"


BT_FLAGS = ["--validate-before-training", "--lr", "2e-4", "--batch-size", "16", "--max-epochs", "1", "--num-sanity-val-steps", "0",
            "--log-every-n-steps", "10"]


def test_bt_learns_to_rank_correct_solutions_first(bt_run):
    s = scalars(bt_run)
    accuracy = [v for _, v in s["val/accuracy"]]
    # Step 0: a fresh score head ranks at chance. After one epoch, well above it on the 200
    # held-out pairs: all of the bare-answer third right, the arithmetic slips near chance
    # (the README has the split).
    assert abs(accuracy[0] - 0.5) < 0.05 and accuracy[-1] >= 0.6
    assert s["val/margin"][-1][1] > s["val/margin"][0][1]
    for name in ("train/loss", "train/accuracy", "train/margin", "train/pairs", "val/reward_mean", "val/reward_std",
                 "val/rewards/chosen", "val/rewards/rejected"):
        assert name in s, name
    assert "val/edit_distance" not in s and "val/perplexity" not in s     # a reward model does not generate
    mean, std = s["val/reward_mean"][-1][1], s["val/reward_std"][-1][1]
    chosen, rejected = s["val/rewards/chosen"][-1][1], s["val/rewards/rejected"][-1][1]
    assert mean == pytest.approx((chosen + rejected) / 2, abs=1e-4) and std > 0



def test_export_is_a_sequence_classifier_and_a_judge(bt_run, tmp_path, tokenizer):
    from transformers import AutoModelForSequenceClassification

    from judges import RewardModelJudge
    from reward_model import reward_inputs
    out = tmp_path / "rm"
    assert upload_to_hub.main(["--checkpoint-path", str(bt_run), "--output-dir", str(out),
                               "--training-type", "bt"]) == 0
    model = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    assert model.config.num_labels == 1 and model.config.pad_token_id == tokenizer.pad_token_id
    assert "AutoModelForSequenceClassification" in (out / "README.md").read_text()
    good = PAIR + [{"role": "assistant", "content": "12 - 5 = 7. The answer is 7."}]
    bad = PAIR + [{"role": "assistant", "content": "12 - 5 = 8. The answer is 8."}]
    ids = torch.tensor([reward_inputs(tokenizer, good, 1024)])
    with torch.no_grad():
        direct = model(input_ids=ids).logits[0, 0].item()
    from_folder = RewardModelJudge(str(out)).score([PAIR, PAIR], ["12 - 5 = 7. The answer is 7.",
                                                                  "12 - 5 = 8. The answer is 8."])
    from_run = RewardModelJudge(str(bt_run)).score([PAIR], ["12 - 5 = 7. The answer is 7."])
    assert from_folder[0] == pytest.approx(direct, abs=1e-5) and from_run[0] == pytest.approx(direct, abs=1e-5)
    assert from_folder[0] != from_folder[1]
    # By kind of rejected reply (embedded/build.py): every third held-out pair has a bare wrong
    # answer, which a trained reward model ranks below the worked solution every time.
    import json

    from conftest import REPO
    rows = [json.loads(line) for line in (REPO / "embedded/data/prefs/test_prefs.jsonl").open()][2::3]
    judge = RewardModelJudge(str(out))
    chosen = judge.score([r["chosen"][:-1] for r in rows], [r["chosen"][-1]["content"] for r in rows])
    rejected = judge.score([r["rejected"][:-1] for r in rows], [r["rejected"][-1]["content"] for r in rows])
    assert all(r["rejected"][-1]["content"].startswith("The answer is") for r in rows)
    assert sum(c > r for c, r in zip(chosen, rejected)) / len(rows) >= 0.95
    with pytest.raises(errors.ConfigError, match="is a reward model; a generative model is needed"):
        from models import load_trained
        load_trained(str(out))


def test_centering_term_adds_c_times_squared_reward_sum(tokenizer):
    from models import load_model
    from module import PostTrainingModule
    config, _ = flags.parse_config(["--training-type", "bt", "--train-dataset-length", "6"])
    config = flags.resolve(config)
    loaders, _, _, _ = train.build_data(config, tokenizer)
    batch = PreferenceCollator(tokenizer.pad_token_id)(list(loaders["train"].dataset))
    torch.manual_seed(0)
    model = load_model("bt", config.model.model_name, tokenizer).eval()
    plain_loss, sums = PostTrainingModule(config, model=model).compute(batch)
    centered_loss, _ = PostTrainingModule(config.replace(center_rewards_coefficient=0.5), model=model).compute(batch)
    chosen, rejected = sums["rewards/chosen"], sums["rewards/rejected"]
    assert sums["count"] == 6 and float(sums["_reward_sum"]) == pytest.approx(float(chosen + rejected), abs=1e-5)
    from reward_model import sequence_rewards
    with torch.no_grad():
        r = sequence_rewards(model, batch.input_ids, batch.attention_mask)
    expected = 0.5 * ((r[:6] + r[6:]) ** 2).mean()
    assert (centered_loss - plain_loss).item() == pytest.approx(expected.item(), rel=1e-4)


def test_bt_on_real_hh_rlhf_transcripts(tmp_path):
    assert train.main(["--training-type", "bt", "--dataset-name", str(HH_RLHF), "--skip-bad-rows",
                       "--storage-path", str(tmp_path), "--name", "hh", "--max-steps", "4", "--batch-size", "4",
                       "--train-dataset-length", "64", "--test-dataset-length", "16", "--max-length", "256",
                       "--num-sanity-val-steps", "0", "--log-every-n-steps", "1", "--validate-before-training"]) == 0
    s = scalars(tmp_path / "hh")
    assert [step for step, _ in s["train/loss"]] == [0, 1, 2, 3]
    assert 0.0 <= s["val/accuracy"][-1][1] <= 1.0 and s["data/test_rows"][0][1] > 0
    # Long transcripts whose reply falls beyond --max-length are dropped and counted.
    assert s["data/train_rows"][0][1] + s["data/train_dropped_truncated"][0][1] == 64
