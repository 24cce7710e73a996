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
date. A --lora-r checkpoint is exported with its adapters merged into the weights (peft's
merge_and_unload), or with --adapter-only as peft's adapter folder (adapter_config.json,
adapter_model.safetensors) beside the tokenizer and card. It never holds optimizer state, credentials or
absolute local paths. The upload uses huggingface_hub with the token from HF_TOKEN; the
repository is private unless --public. The folder is written under a temporary name and
moved into place, so an interrupted export leaves nothing half-written.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

from errors import ConfigError, UserError
from logs import configure_logging


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint-path", required=True, help=".ckpt file, run folder or Ray checkpoint folder")
    p.add_argument("--repo-id", default=None, help="Hub repository to upload to, e.g. user/qwen-sft")
    p.add_argument("--output-dir", default=None, help="write the folder here (and upload it if --repo-id is given)")
    p.add_argument("--training-type", default=None, choices=("sft", "dpo", "bt", "sft_verifier"),
                   help="checked against the checkpoint's own training type")
    p.add_argument("--adapter-only", action=argparse.BooleanOptionalAction, default=False,
                   help="a --lora-r checkpoint: write peft's adapter folder alone (for PeftModel.from_pretrained on "
                        "the base model) instead of the full model with the adapters merged in")
    p.add_argument("--public", action=argparse.BooleanOptionalAction, default=False,
                   help="create the Hub repository as public (private by default)")
    return p


def upload(folder: str, repo_id: str, public: bool) -> None:
    from huggingface_hub import HfApi
    token = os.environ.get("HF_TOKEN")
    if not token:
        raise ConfigError("HF_TOKEN is not set; export a Hugging Face write token to upload.")
    api = HfApi(token=token)
    api.create_repo(repo_id, private=not public, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message="Upload from upload_to_hub.py")


def main(argv: list[str] | None = None) -> int:
    from models import export
    args = build_parser().parse_args(argv)
    configure_logging(verbose=False)
    if not args.repo_id and not args.output_dir:
        print("error: give --repo-id (upload) or --output-dir (export only), or both.", file=sys.stderr)
        return 2
    if args.repo_id and not os.environ.get("HF_TOKEN"):     # before the export: nothing to throw away
        print("error: HF_TOKEN is not set; export a Hugging Face write token to upload.", file=sys.stderr)
        return 2
    folder = args.output_dir or tempfile.mkdtemp(prefix="hub-export-")
    try:
        export(args.checkpoint_path, folder, args.training_type, adapter_only=args.adapter_only)
        if args.repo_id:
            upload(folder, args.repo_id, args.public)
    except UserError as e:
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
