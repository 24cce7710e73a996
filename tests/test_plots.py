"""plots.py: from a short real DPO run's TensorBoard events (with win rate), one PNG per
logged curve, each a real image (size, many colours); curves the run did not log are
skipped and named; a folder without events is one sentence."""
import pytest

import plots
import train
from conftest import read_scalars


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory):
    storage = tmp_path_factory.mktemp("runs")
    assert train.main(["--training-type", "dpo", "--storage-path", str(storage), "--name", "dpo",
                       "--train-dataset-length", "32", "--test-dataset-length", "8", "--batch-size", "4",
                       "--max-epochs", "2", "--lr", "1e-4", "--val-generations", "0", "--num-sanity-val-steps", "0",
                       "--log-every-n-steps", "1", "--calculate-win-rate", "--judge", "length",
                       "--win-rate-prompts", "2", "--val-max-new-tokens", "8", "--validate-before-training"]) == 0
    return storage / "dpo"


def test_figures_of_a_real_run(dpo_run, tmp_path, capsys):
    from PIL import Image
    out = tmp_path / "figs"
    assert plots.main(["--run", str(dpo_run), "--output-dir", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["rewards_margins.png", "train_loss.png", "val_loss.png", "val_win_rate.png"]
    message = capsys.readouterr().out
    assert "Wrote 4 figures" in message and "not logged by this run: val_verifier_score" in message
    for name in names:
        image = Image.open(out / name)
        assert image.format == "PNG" and image.size == (640, 400)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
        # Axes, ticks, labels, anti-aliased lines: hundreds of colours; a blank image has one.
        assert len(colours) > 50 and (out / name).stat().st_size > 10_000
    # The events really hold what the figures draw: 16 steps of train/loss, 3 validations.
    s = read_scalars(dpo_run / "tensorboard")
    assert len(s["train/loss"]) == 16 and len(s["val/loss"]) == 3 and s["val/loss"][0][0] == 0
    assert s["val/win_rate"][0] == (0, 0.5)


def test_the_default_output_folder_and_a_run_without_events(dpo_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert plots.main(["--run", str(dpo_run / "tensorboard")]) == 0
    assert (tmp_path / "plots" / "tensorboard" / "val_loss.png").is_file()
    (tmp_path / "empty").mkdir()
    assert plots.main(["--run", str(tmp_path / "empty")]) == 2
    assert plots.main(["--run", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "holds none of the scalars plotted here" in err[0]
    assert err[1] == f"error: Run folder {tmp_path / 'missing'} does not exist."


def test_events_on_s3_and_figures_written_to_s3(dpo_run, s3_server):
    """The run's event files on a real S3 endpoint (moto): read through TensorBoard's loader,
    figures written back to S3, byte for byte what the local run gives."""
    import s3fs
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server})
    for path in (dpo_run / "tensorboard").iterdir():
        fs.put(str(path), f"test-bucket/runs/dpo/tensorboard/{path.name}")
    assert plots.main(["--run", "s3://test-bucket/runs/dpo", "--output-dir", "s3://test-bucket/figs"]) == 0
    fs.invalidate_cache()
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls("test-bucket/figs")) == \
        ["rewards_margins.png", "train_loss.png", "val_loss.png", "val_win_rate.png"]
    assert read_scalars("s3://test-bucket/runs/dpo/tensorboard") == read_scalars(dpo_run / "tensorboard")
    local = plots.figure_png("Validation loss", "loss", {"val/loss": read_scalars(dpo_run / "tensorboard")["val/loss"]})
    assert fs.cat("test-bucket/figs/val_loss.png") == local
