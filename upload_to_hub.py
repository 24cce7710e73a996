"""Export a training checkpoint as a Hugging Face model folder, and publish it on the Hub.

    python upload_to_hub.py --checkpoint-path runs/sft-demo --output-dir exported/sft-demo
    python upload_to_hub.py --checkpoint-path s3://bucket/runs/SFT --repo-id user/name --training-type sft

--checkpoint-path takes a Lightning .ckpt file, a run folder (its checkpoints/last.ckpt, or
a Ray run's latest checkpoint_*/checkpoint.ckpt) or a Ray checkpoint folder, local or s3://.
A bt checkpoint becomes an AutoModelForSequenceClassification folder (a reward model that
`train.py --judge` and `win_rate.py --judge` load); the others AutoModelForCausalLM folders.
The folder holds safetensors weights, config.json, generation_config.json, the tokenizer
with its chat template, and a model card (README.md) with the base model, training type,
data set, hyper-parameters, the final validation metrics (the last val/* value of each
metric at or before the checkpoint's step, read from the run's TensorBoard events) and the
date. It never holds optimizer state, credentials or
absolute local paths. The upload uses huggingface_hub with the token from HF_TOKEN; the
repository is private unless --public. The folder is written under a temporary name and
moved into place, so an interrupted export leaves nothing half-written.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import packaged_models
import storage

# Hyper-parameters worth a line in the model card, in this order: those of every run, then
# those of its training type.
CARD_KEYS = ("training_type", "lr", "batch_size", "accumulate_grad_batches", "max_epochs", "max_steps",
             "max_length", "warmup_ratio", "weight_decay", "gradient_clip_val", "precision", "seed",
             "dataset_source", "train_dataset_length")
TYPE_KEYS = {"sft": ("length_penalty", "length_penalty_every"), "dpo": ("beta", "rpo_alpha"),
             "bt": ("center_rewards_coefficient",), "sft_verifier": ("lambda_",),
             "grpo": ("num_generations", "temperature", "top_p", "max_new_tokens", "advantage", "loss_aggregation",
                      "num_iterations", "clip_range", "kl_coef", "reward_funcs", "reward_weights", "reward_model",
                      "reward_model_weight")}


USAGE = {
    "lm": "Load it with `AutoModelForCausalLM.from_pretrained(...)`; chat through the bundled chat template "
          "(`tokenizer.apply_chat_template`).",
    "bt": "A Bradley-Terry reward model: load it with `AutoModelForSequenceClassification.from_pretrained(...)`; "
          "the reward of a conversation (rendered with the chat template, ending with the reply's end-of-turn "
          "token) is the score at its last token. `train.py --judge <this folder>` uses it as a win-rate judge.",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint-path", required=True, help=".ckpt file, run folder or Ray checkpoint folder")
    p.add_argument("--repo-id", default=None, help="Hub repository to upload to, e.g. user/qwen-sft")
    p.add_argument("--output-dir", default=None, help="write the folder here (and upload it if --repo-id is given)")
    p.add_argument("--training-type", default=None, choices=("sft", "dpo", "bt", "sft_verifier"),
                   help="checked against the checkpoint's own training type")
    p.add_argument("--public", action=argparse.BooleanOptionalAction, default=False,
                   help="create the Hub repository as public (private by default)")
    return p


def _shown_name(name: str) -> str:
    """A model or data set name fit for a card: the bundled ones relative to the repository,
    other local paths by their last component, Hub names as they are."""
    repo = os.path.dirname(os.path.abspath(__file__))
    if os.path.isabs(name):
        return os.path.relpath(name, repo) if name.startswith(repo + os.sep) else os.path.basename(name.rstrip("/"))
    return name


def final_metrics(ckpt_path: str, step: int | None) -> dict:
    """The last value of each val/* scalar logged at or before `step`, from the TensorBoard
    events of the run that holds the checkpoint (<run>/checkpoints/x.ckpt or a Ray run's
    <run>/checkpoint_*/checkpoint.ckpt); {} when the run's events are not there."""
    from flags import _is_run_checkpoint_dir
    from plots import read_scalars
    events = storage.join(storage.parent(storage.parent(ckpt_path)), "tensorboard")
    try:
        if not _is_run_checkpoint_dir(storage.parent(ckpt_path)) or not storage.isdir(events):
            return {}
        scalars = read_scalars(events)
    except Exception:  # noqa: BLE001 - a card without metrics beats no export
        return {}
    metrics = {}
    for tag, points in sorted(scalars.items()):
        kept = [v for s, v in points if step is None or s <= step]
        if tag.startswith("val/") and kept:
            metrics[tag] = kept[-1]
    return metrics


def model_card(config: dict, step: int | None, metrics: dict | None = None, source: dict | None = None) -> str:
    """The README.md of an export; `source` is the base model's GGUF provenance (packaged_models.source)."""
    base, data = _shown_name(config["model_name"]), _shown_name(config["dataset_name"])
    keys = CARD_KEYS + TYPE_KEYS.get(config["training_type"], ())
    rows = "\n".join(f"| `{k.rstrip('_')}` | `{config[k]}` |" for k in keys if config.get(k) not in (None, ""))
    origin = f" Base model: {packaged_models.describe(source)}." if source else ""
    results = ""
    if metrics:
        lines = "\n".join(f"| `{k}` | {v:.4g} |" for k, v in metrics.items())
        results = (f"## Final metrics\n\nLast validation values logged at or before step {step}:\n\n"
                   f"| metric | value |\n| --- | --- |\n{lines}\n\n")
    return (f"---\nbase_model: {base}\ntags: [{config['training_type']}]\n---\n\n"
            f"# {config['training_type'].upper()} of {base}\n\n"
            f"Trained with `train.py --training-type {config['training_type']}` on `{data}`"
            f"{f' for {step} optimizer steps' if step is not None else ''}; exported on "
            f"{time.strftime('%Y-%m-%d')}.{origin}\n\n| hyper-parameter | value |\n| --- | --- |\n{rows}\n\n"
            f"{results}{USAGE['bt' if config['training_type'] == 'bt' else 'lm']}\n")


def export(ckpt_path: str, output_dir: str, training_type: str | None = None) -> dict:
    """Write the Hugging Face folder for a checkpoint; returns the checkpoint's config."""
    import flags
    from models import load_checkpoint, pretrained_path

    ckpt_path = flags.find_checkpoint(ckpt_path, best=True)
    model, tokenizer, config, step = load_checkpoint(ckpt_path)
    if training_type and training_type != config["training_type"]:
        raise flags.ConfigError(f"Checkpoint {ckpt_path} is a {config['training_type']} checkpoint, "
                                f"not {training_type}.")
    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        model.config.name_or_path = _shown_name(config["model_name"])
        # Every process writes a whole folder: inside a process group (a Ray Train worker)
        # transformers writes weights and config on rank 0 only, and the other workers' exports
        # of a --model-name or --reward-model run folder had neither.
        model.should_save_on_this_rank = lambda is_main_process: is_main_process
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        # A base model dequantized from a GGUF file says so, here and in every export down the line.
        source = packaged_models.source(pretrained_path(config["model_name"]))
        if source:
            with open(os.path.join(tmp, packaged_models.SOURCE_FILE), "w", encoding="utf-8") as f:
                json.dump(source, f, indent=1)
        with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
            f.write(model_card(config, step, final_metrics(ckpt_path, step), source))
        if os.path.exists(output_dir):
            shutil.rmtree(output_dir)
        os.replace(tmp, output_dir)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    return config


def upload(folder: str, repo_id: str, public: bool) -> None:
    import flags
    from huggingface_hub import HfApi
    token = os.environ.get("HF_TOKEN")
    if not token:
        raise flags.ConfigError("HF_TOKEN is not set; export a Hugging Face write token to upload.")
    api = HfApi(token=token)
    api.create_repo(repo_id, private=not public, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message="Upload from upload_to_hub.py")


def main(argv: list[str] | None = None) -> int:
    import flags
    import train
    from models import ModelLoadError
    args = build_parser().parse_args(argv)
    train.configure_logging(verbose=False)
    if not args.repo_id and not args.output_dir:
        print("error: give --repo-id (upload) or --output-dir (export only), or both.", file=sys.stderr)
        return 2
    if args.repo_id and not os.environ.get("HF_TOKEN"):     # before the export: nothing to throw away
        print("error: HF_TOKEN is not set; export a Hugging Face write token to upload.", file=sys.stderr)
        return 2
    folder = args.output_dir or tempfile.mkdtemp(prefix="hub-export-")
    try:
        export(args.checkpoint_path, folder, args.training_type)
        if args.repo_id:
            upload(folder, args.repo_id, args.public)
    except (flags.ConfigError, ModelLoadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if not args.output_dir and os.path.isdir(folder):
            shutil.rmtree(folder)
    print(f"Exported to {args.output_dir}" if args.output_dir and not args.repo_id else
          f"Uploaded to https://huggingface.co/{args.repo_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
