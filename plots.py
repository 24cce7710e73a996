"""PNG figures of a run's training curves, read from its TensorBoard events (local or s3://).

    python plots.py --run runs/dpo-demo                         # -> plots/dpo-demo/*.png
    python plots.py --run s3://bucket/runs/SFT --output-dir figures/sft

--run is a train.py run folder (its tensorboard/ subfolder is read) or a TensorBoard folder.
One figure per curve the seed reports, for the curves the run logged (others are skipped
and listed): train_loss.png (train/loss), val_loss.png (val/loss),
val_verifier_score.png (val/verifier_score, sft_verifier runs), val_win_rate.png
(val/win_rate, --calculate-win-rate runs) and rewards_margins.png (train/ and
val/rewards/margins, DPO runs). Each file is written under a temporary name and moved into
place. S3 needs the AWS variables (and S3_ENDPOINT for an S3-compatible endpoint), as
`tensorboard --logdir s3://...` does.
"""
from __future__ import annotations

import argparse
import io
import sys

import storage

# file stem -> (title, y label, tags drawn on it)
FIGURES = {
    "train_loss": ("Training loss", "loss", ("train/loss",)),
    "val_loss": ("Validation loss", "loss", ("val/loss",)),
    "val_verifier_score": ("Validation verifier score", "mean score (Yes rows) - mean score (No rows)",
                           ("val/verifier_score",)),
    "val_win_rate": ("Win rate against the reference model", "win rate", ("val/win_rate",)),
    "rewards_margins": ("DPO reward margins", "reward(chosen) - reward(rejected)",
                        ("train/rewards/margins", "val/rewards/margins")),
    "reward": ("GRPO reward (train: sampled; val: greedy)", "mean reward", ("train/reward", "val/reward")),
}


def read_scalars(tensorboard_dir) -> dict:
    """Every scalar of a TensorBoard folder (local or s3://): tag -> [(step, value)] by step.
    Sorted because a run writes two event files (Lightning closes the writer after the step-0
    validation) and the reader takes files in name order, which is not creation order once a
    process has opened ten writers (".10" sorts before ".9")."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(tensorboard_dir), size_guidance={"scalars": 0})   # 0: keep every point
    events.Reload()
    return {tag: sorted(((e.step, e.value) for e in events.Scalars(tag)), key=lambda x: x[0])
            for tag in events.Tags()["scalars"]}


def tensorboard_dir(run: str) -> str:
    """A run folder's tensorboard/ subfolder, or the folder itself when it holds the events."""
    sub = storage.join(run, "tensorboard")
    return sub if storage.isdir(sub) else run


def figure_png(title: str, ylabel: str, curves: dict, xlabel: str = "optimizer step") -> bytes:
    """One line per tag, curves {tag: [(x, y), ...]} (markers where there are few points, as
    for validation curves)."""
    import matplotlib
    matplotlib.use("Agg")                 # no display: files only
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for tag, points in curves.items():
        steps, values = zip(*points)
        ax.plot(steps, values, label=tag, marker="o" if len(points) <= 30 else None, linewidth=1.2)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def make_plots(run: str, output_dir: str) -> tuple[list[str], list[str]]:
    """Write the figures; returns (paths written, figures skipped for want of their tags)."""
    scalars = read_scalars(tensorboard_dir(run))
    written, skipped = [], []
    for stem, (title, ylabel, tags) in FIGURES.items():
        curves = {t: scalars[t] for t in tags if scalars.get(t)}
        if not curves:
            skipped.append(stem)
            continue
        path = storage.join(output_dir, f"{stem}.png")
        storage.write_bytes_atomic(path, figure_png(title, ylabel, curves))
        written.append(path)
    return written, skipped


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--run", required=True, help="train.py run folder or TensorBoard folder, local or s3://")
    p.add_argument("--output-dir", default=None, help="where the PNGs go (default: plots/<run name>)")
    args = p.parse_args(argv)
    try:
        if not storage.isdir(args.run):
            raise ValueError(f"Run folder {args.run} does not exist.")
        output_dir = args.output_dir or storage.join("plots", storage.basename(args.run))
        written, skipped = make_plots(args.run, output_dir)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not written:
        print(f"error: {tensorboard_dir(args.run)} holds none of the scalars plotted here "
              f"({', '.join(t for _, _, tags in FIGURES.values() for t in tags)}).", file=sys.stderr)
        return 2
    print(f"Wrote {len(written)} figures to {output_dir}: {', '.join(storage.basename(w) for w in written)}"
          + (f" (not logged by this run: {', '.join(skipped)})" if skipped else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
