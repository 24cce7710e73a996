"""SFT with the dynamic length penalty (--length-penalty): one flag away from plain SFT, and it
shortens the replies compared with plain SFT on the same data and seed."""
import train
from conftest import read_scalars

COMMON = ["--validate-before-training", "--lr", "1e-3", "--max-steps", "100", "--val-check-interval", "50", "--val-generations", "16",
          "--test-dataset-length", "16", "--num-sanity-val-steps", "0", "--log-every-n-steps", "5"]


def test_length_penalty_shortens_replies_against_plain_sft(tmp_path):
    assert train.main(["--storage-path", str(tmp_path), "--name", "plain", *COMMON]) == 0
    assert train.main(["--storage-path", str(tmp_path), "--name", "penalty", "--length-penalty", "0.001",
                       "--length-penalty-every", "5", *COMMON]) == 0
    plain, penalty = (read_scalars(tmp_path / name / "tensorboard") for name in ("plain", "penalty"))
    # The same starting model validated at step 0: greedy replies run to the 128-token budget.
    assert plain["val/reply_length"][0] == penalty["val/reply_length"][0]
    assert plain["val/reply_length"][0][1] > 100
    end_plain, end_penalty = plain["val/reply_length"][-1], penalty["val/reply_length"][-1]
    assert end_plain[0] == end_penalty[0] == 99
    assert end_penalty[1] < 0.75 * end_plain[1], (end_plain, end_penalty)
    # The penalty was measured on its steps only (0, 5, 10, ...) and fell as replies shortened.
    steps = [s for s, _ in penalty["train/length_penalty"]]
    assert steps == list(range(0, 100, 5))
    values = [v for _, v in penalty["train/length_penalty"]]
    assert values[0] > 1 and sum(values[-5:]) / 5 < 0.2 * values[0]
    assert "train/length_penalty" not in plain
