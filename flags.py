"""train.py's command line: every flag declared once, YAML defaults, validation of flag
combinations (one sentence each), and the defaults that depend on other flags (model, data,
run name, the checkpoint to resume and the config saved with it).

    config, given = parse_config(argv)   # flags (+ --config YAML, + a resumed run's config)
    validate(config, given)              # ConfigError for what we cannot honour
    config = resolve(config)             # embedded defaults, run name, run folder of a checkpoint
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import chat_templates
import storage
from checkpoints import find_checkpoint, is_run_checkpoint_dir, saved_config
from errors import ConfigError

REPO = Path(__file__).resolve().parent
EMBEDDED_MODEL = REPO / "embedded" / "model"
EMBEDDED_DATA = {"sft": REPO / "embedded" / "data" / "sft", "dpo": REPO / "embedded" / "data" / "prefs",
                 "bt": REPO / "embedded" / "data" / "prefs", "sft_verifier": REPO / "embedded" / "data" / "problems",
                 "grpo": REPO / "embedded" / "data" / "problems"}
TRAINING_TYPES = ("sft", "dpo", "bt", "sft_verifier", "grpo")
STRATEGIES = ("auto", "ddp", "fsdp")
PRECISIONS = ("32-true", "bf16-true", "bf16-mixed", "16-mixed", "16-true", "transformer-engine")


def build_parser(suppress_defaults: bool = False) -> argparse.ArgumentParser:
    """Every flag, declared once with its default and help text."""
    p = argparse.ArgumentParser(description="Train or evaluate a language model (SFT, DPO, BT reward models, GenRM-CoT verifiers) locally or on Ray.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                argument_default=argparse.SUPPRESS if suppress_defaults else None)

    section = [p]

    def group(title: str) -> None:
        section[0] = p.add_argument_group(title)

    def add(*names, **kw):
        if suppress_defaults:
            kw.pop("default", None)
        section[0].add_argument(*names, **kw)

    flag = argparse.BooleanOptionalAction
    group("run")
    add("--config", type=str, default=None, help="YAML file of flag defaults (keys are flag names); the command line wins")
    add("--training-type", choices=TRAINING_TYPES, default="sft", help="what to train")
    add("--mode", choices=("train", "test"), default="train",
        help="train, or evaluate --resume-from-checkpoint (or --model-name) on the test split")
    add("--model-name", type=str, default=None,
        help="the starting model: a Hub name, a model folder, a .gguf file, a train.py run, or a packaged model's "
             "short name (smollm2-135m-instruct, all-minilm-l6-v2; see README, Real models) (default: the bundled "
             "tiny Qwen2 model, embedded/model)")
    add("--dataset-name", type=str, default=None,
        help="Hub name, data file or folder (default: the bundled data set for the training type, embedded/data/)")
    add("--storage-path", type=str, default="runs", help="where run folders are written")
    add("--name", type=str, default=None, help="run folder name (default: <training-type>-<date>-<time>)")
    add("--seed", type=int, default=42, help="seed for weights init, data order and sampling")
    add("--verbose", action=flag, default=False, help="debug logging, library warnings")
    add("--roundoff", type=int, default=None, help="round logged metric values to this many digits")
    add("--trust-remote-code", action=flag, default=False, help="allow model code from the Hub (off for safety)")
    add("--chat-template", type=str, default=None, help=chat_templates.HELP)

    group("optimisation")
    add("--max-epochs", type=int, default=1, help="epochs over the training set")
    add("--max-steps", type=int, default=-1, help="stop after this many optimizer steps (-1: no limit)")
    add("--batch-size", type=int, default=8, help="rows per micro-batch, per worker")
    add("--accumulate-grad-batches", type=int, default=1,
        help="micro-batches per optimizer step; the loss is normalised over the whole step")
    add("--lr", type=float, default=2e-5, help="peak learning rate (AdamW)")
    add("--warmup-ratio", type=float, default=0.05, help="fraction of steps of linear warm-up before linear decay to 0")
    add("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    add("--gradient-clip-val", type=float, default=1.0, help="clip the gradient norm to this (0: off)")
    add("--max-nonfinite-steps", type=int, default=3,
        help="a step whose loss or gradient is not finite is skipped and counted; this many in a row stop the run")
    add("--activation-checkpointing", action=flag, default=False,
        help="recompute each decoder layer's activations in the backward pass instead of keeping them "
             "(transformers' activation checkpointing): less memory, about one more forward of compute a step")
    add("--compile", action=flag, default=False,
        help="torch.compile the training forward (the decoder or reward model's base model, dynamic shapes): "
             "faster steps after a first step that compiles (about a minute on CPU); validation, reference "
             "log-probs and generation stay eager; not with --strategy fsdp (see README, Performance)")
    add("--max-length", type=int, default=1024, help="truncate tokenized conversations to this many tokens")
    add("--packing", action=flag, default=True,
        help="sft, sft_verifier, dpo, bt: pack each micro-batch's sequences into rows no longer than its "
             "longest (first-fit decreasing; position_ids restart at each one and attention stays within it) "
             "where that saves rows, instead of one padded row each; same loss and gradients, less padding "
             "(see README, Performance)")
    add("--precision", choices=PRECISIONS, default="32-true", help="Lightning precision")
    add("--beta", type=float, default=0.1, help="DPO beta (the seed used 1.0 and 2.0)")
    add("--rpo-alpha", type=float, default=0.0,
        help="DPO: weight of the NLL term on the chosen reply, L_DPO + a * NLL(y_w)/|y_w| (RPO, Pang et al. "
             "2024; 0: off, the paper used 1)")
    add("--precompute-ref-log-probs", action=flag, default=True,
        help="DPO: compute the reference log-probs once before training and keep them with the data "
             "(no reference model in memory while training); --no-... runs the reference live")
    add("--center-rewards-coefficient", type=float, default=0.0,
        help="bt: weight c of the reward-centering term c * E[(r_w + r_l)^2] (0: off)")
    add("--lambda", dest="lambda_", metavar="LAMBDA", type=float, default=0.1,
        help="GenRM weight of the generation term, L_verify + lambda * L_correct (sft_verifier)")

    group("online RL (grpo) and sampling")
    add("--num-generations", type=int, default=4, help="grpo: completions sampled per prompt (the group)")
    add("--temperature", type=float, default=1.0,
        help="sampling temperature of grpo rollouts and of --length-penalty samples")
    add("--top-p", type=float, default=1.0, help="nucleus sampling top-p of those samples")
    add("--max-new-tokens", type=int, default=128,
        help="token budget of each sampled completion (grpo rollouts and validation, --length-penalty samples)")
    add("--advantage", choices=("grpo", "rloo", "drgrpo"), default="grpo",
        help="grpo: group-normalised (R - mean) / (std + eps), leave-one-out (RLOO, the seed's eq. 6), "
             "or mean-centred without the std (Dr. GRPO)")
    add("--loss-aggregation", choices=("token", "sequence"), default="token",
        help="grpo: average the per-token loss over all completion tokens of the step, or sum it over "
             "each completion and average over completions (the seed's summed log pi(y|x))")
    add("--num-iterations", type=int, default=1,
        help="grpo: optimizer steps on each rollout; above 1 the clipped ratio takes effect")
    add("--clip-range", type=float, default=0.2, help="grpo: clip rho to [1 - eps, 1 + eps]")
    add("--kl-coef", type=float, default=0.04,
        help="grpo: weight of the k3 KL to the frozen starting model (0: no reference model is loaded)")
    add("--reward-funcs", type=str, default=None,
        help="grpo: comma-separated reward functions (rewards.py: correctness, format, length); "
             "default correctness, or none when --reward-model is given")
    add("--reward-weights", type=str, default=None,
        help="grpo: comma-separated weights of --reward-funcs (default 1 each)")
    add("--reward-model", type=str, default=None,
        help="grpo: a reward model scoring (prompt, completion): a bt run, AutoModelForSequenceClassification "
             "folder or Hub name, or openai:MODEL (--judge-base-url, --judge-api-key-env)")
    add("--reward-model-weight", type=float, default=1.0, help="grpo: weight of --reward-model's reward")
    add("--length-penalty", type=float, default=0.0,
        help="sft: lambda of the dynamic length penalty lambda * E[max(0, len(y_hat) - len(y))^2] on replies "
             "sampled from the policy (seed 003 used 0.001; 0: off)")
    add("--length-penalty-every", type=int, default=100, help="sft: apply --length-penalty every N steps")

    group("data")
    add("--train-dataset-length", type=int, default=None, help="keep at most this many training rows")
    add("--test-dataset-length", type=int, default=None, help="keep at most this many test rows")
    add("--dataset-random-sample", action=flag, default=False,
        help="with a length cap, take a seeded random subset instead of the first rows")
    add("--dataset-source", type=str, default=None, help="keep rows whose 'source' column equals this")
    add("--train-percentile", type=float, default=None,
        help="keep training rows whose string length is <= this percentile (98 drops the longest 2%%)")
    add("--test-percentile", type=float, default=None, help="same for test rows")
    add("--skip-bad-rows", action=flag, default=False,
        help="skip and count malformed rows instead of stopping at the first one")
    add("--sanity-train", action=flag, default=False, help="validate on the training set (checks the code can overfit)")

    group("evaluation and checkpoints")
    add("--check-val-every-n-epoch", type=int, default=1, help="validate every N epochs")
    add("--num-sanity-val-steps", type=int, default=2, help="validation batches run before training starts")
    add("--validate-before-training", action=flag, default=False,
        help="validate the starting model before the first step and log it at step 0 (the curves' baseline); "
             "one pass over the test split, minutes for a 135M model on CPU (off: the first validation comes "
             "after training, at --check-val-every-n-epoch or --val-check-interval)")
    add("--val-generations", type=int, default=4, help="validation prompts answered greedily for val/edit_distance")
    add("--val-max-new-tokens", type=int, default=128, help="token budget of those replies")
    add("--verifier-eval-rows", type=int, default=8,
        help="sft_verifier: score the first N verify rows of the test split at every validation "
             "(val/verifier_score, val/verifier_accuracy; 0: off); each row samples --verifier-k rationales "
             "of up to --val-max-new-tokens tokens")
    add("--verifier-k", type=int, default=4, help="sft_verifier: rationales sampled per scored row in validation")
    add("--calculate-win-rate", action=flag, default=False,
        help="at every validation, log val/win_rate of the policy's replies against the reference model's, "
             "as scored by --judge (ties count half); per-prompt records go to <run>/win_rate/")
    add("--judge", type=str, default=None,
        help="win-rate judge: a reward-model folder, Hub name or bt run; openai:MODEL for an OpenAI-compatible "
             "endpoint; correctness (final answer equals the reference's); length (longer wins: a bias probe)")
    add("--judge-base-url", type=str, default="https://integrate.api.nvidia.com/v1",
        help="base URL of the openai:MODEL judge (default: NVIDIA's API, as the seed used)")
    add("--judge-api-key-env", type=str, default="NVIDIA_API_KEY",
        help="environment variable holding the openai:MODEL judge's API key")
    add("--reference-model", type=str, default=None,
        help="win rate against this model (name, folder or checkpoint; default: the starting --model-name)")
    add("--win-rate-prompts", type=int, default=64, help="first N test prompts used for the win rate")
    add("--win-rate-temperature", type=float, default=0.0,
        help="sampling temperature of both models' win-rate replies (0: greedy)")
    add("--win-rate-top-p", type=float, default=1.0, help="nucleus sampling top-p of those replies")
    add("--val-check-interval", type=int, default=None,
        help="validate every N optimizer steps, counted across epochs (default: every "
             "--check-val-every-n-epoch epochs)")
    add("--monitor", type=str, default=None,
        help="validation metric for --early-stopping-patience and --save-best (default val/loss; "
             "val/reward for grpo)")
    add("--monitor-mode", choices=("min", "max"), default=None,
        help="whether --monitor improves downwards or upwards (default: min for loss, perplexity, "
             "edit distance and length metrics, else max)")
    add("--early-stopping-patience", type=int, default=None,
        help="stop after N validations in a row without a better --monitor value (implies --save-best)")
    add("--save-best", action=flag, default=False,
        help="keep checkpoints/best.ckpt, the checkpoint with the best --monitor value; loading the run "
             "folder as a model (--model-name, upload_to_hub.py, infer.py, evaluate.py) then uses it, "
             "while --resume-from-checkpoint continues from the last")
    add("--log-every-n-steps", type=int, default=10, help="log training metrics every N steps")
    add("--checkpoint-frequency", type=int, default=1, help="save a checkpoint every N epochs")
    add("--checkpoint-every-n-steps", type=int, default=None,
        help="also save a checkpoint every N optimizer steps, inside epochs; a resumed run continues from "
             "that point of the epoch (same data order, optimizer, scheduler and RNG states)")
    add("--ckpt-to-keep", type=int, default=2, help="keep the N most recent checkpoints (plus last.ckpt)")
    add("--resume-from-checkpoint", type=str, default=None,
        help="a .ckpt file, or a run folder (its checkpoints/last.ckpt), to continue or to test")
    add("--s3-retries", type=int, default=5,
        help="attempts at each read or write of a remote (s3://) run folder that fails with a transient error "
             "(connection refused or reset, timeout, HTTP 5xx, throttling) before the run stops")
    add("--s3-retry-delay", type=float, default=1.0,
        help="seconds before the second attempt; doubled after each failed attempt, at most 30 s")
    add("--force-resume", action=flag, default=False,
        help="resume even though the training data's fingerprint differs from the one the checkpoint "
             "recorded (the data order then no longer matches the interrupted run's)")

    group("hardware and distribution")
    add("--use-gpu", action=flag, default=False, help="train on one CUDA GPU (per worker with --use-ray)")
    add("--use-ray", action=flag, default=False, help="run inside Ray Train")
    add("--num-workers", type=int, default=1, help="Ray Train workers")
    add("--strategy", type=str, default="auto", help="distribution strategy: auto, or ddp/fsdp with --use-ray")
    add("--state-dict-type", choices=("full", "sharded"), default="full", help="FSDP checkpoint layout")
    add("--accelerator-type", type=str, default=None, help="Ray accelerator type, e.g. H100")
    add("--placement-strategy", type=str, default="PACK", help="Ray placement strategy")
    add("--max-failures", type=int, default=0,
        help="times Ray restarts the workers from the last checkpoint after a failure (-1: forever)")
    return p


def parse_config(argv: list[str] | None = None) -> tuple[dict, set]:
    """Flags -> (resolved config dict, names set explicitly on the command line or in YAML)."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    given = set(vars(build_parser(suppress_defaults=True).parse_args(argv)))
    pre = vars(parser.parse_args(argv))
    if pre["config"]:
        defaults = _read_yaml_defaults(pre["config"], parser)
        parser.set_defaults(**defaults)
        given |= set(defaults)
    config = vars(parser.parse_args(argv))
    config.pop("config")
    given.discard("config")
    if config["resume_from_checkpoint"]:
        # Resuming or testing a run: its saved config supplies every flag not given now.
        config["resume_from_checkpoint"] = ckpt = find_checkpoint(config["resume_from_checkpoint"])
        saved = saved_config(ckpt)
        if "training_type" in given and saved.get("training_type", config["training_type"]) != config["training_type"]:
            raise ConfigError(f"Checkpoint {ckpt} is a {saved['training_type']} checkpoint; it cannot resume a "
                              f"{config['training_type']} run (start a new run from it with --model-name {ckpt}).")
        for key, value in saved.items():
            if key in config and key not in given and key not in ("mode", "resume_from_checkpoint", "force_resume"):
                config[key] = value
    return config, given


def _read_yaml_defaults(path: str, parser: argparse.ArgumentParser) -> dict:
    import yaml
    if not os.path.isfile(path):
        raise ConfigError(f"Config file {path} does not exist.")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"Config file {path} is not valid YAML: {str(e).splitlines()[0]}.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must hold a mapping of flag names to values.")
    actions = {a.dest: a for a in parser._actions}
    out = {}
    for key, value in data.items():
        dest = str(key).lstrip("-").replace("-", "_")
        dest = "lambda_" if dest == "lambda" else dest
        if dest not in actions or dest in ("help", "config"):
            raise ConfigError(f"Config file {path}: unknown key '{key}'.")
        action = actions[dest]
        if isinstance(action, argparse.BooleanOptionalAction):
            if not isinstance(value, bool):
                raise ConfigError(f"Config file {path}: '{key}' must be true or false.")
            out[dest] = value
        elif value is None:
            out[dest] = None
        else:
            # A string default goes through the flag's type and choices, like a command-line value.
            text = str(value)
            try:
                converted = action.type(text) if action.type else text
            except (TypeError, ValueError):
                raise ConfigError(f"Config file {path}: '{key}' has an invalid value {value!r}.") from None
            if action.choices and converted not in action.choices:
                raise ConfigError(f"Config file {path}: '{key}' must be one of {', '.join(map(str, action.choices))}.")
            out[dest] = converted
    return out


def validate(config: dict, given: set) -> None:
    """Refuse flags we cannot honour and inconsistent combinations, one sentence each."""
    c = config
    for name in ("num_workers", "accelerator_type", "placement_strategy", "max_failures"):
        if name in given and not c["use_ray"]:
            raise ConfigError(f"--{name.replace('_', '-')} only applies with --use-ray.")
    if c["strategy"] not in STRATEGIES:
        raise ConfigError(f"--strategy {c['strategy']} is not supported: use one of {', '.join(STRATEGIES)} "
                          f"(deepspeed is not wired; FSDP covers sharded training).")
    if c["strategy"] != "auto" and not c["use_ray"]:
        raise ConfigError(f"--strategy {c['strategy']} needs --use-ray (workers are Ray Train workers); "
                          f"a local run uses one device.")
    if c["strategy"] == "fsdp" and not c["use_gpu"]:
        raise ConfigError("--strategy fsdp needs --use-gpu: PyTorch's FSDP does not run on CPU workers; "
                          "use --strategy ddp there.")
    if "state_dict_type" in given and c["strategy"] != "fsdp":
        raise ConfigError("--state-dict-type only applies to --strategy fsdp.")
    if c["s3_retries"] < 1 or c["s3_retry_delay"] < 0:
        raise ConfigError("--s3-retries must be at least 1 (one attempt, no retry) and --s3-retry-delay "
                          "at least 0 seconds.")
    if c["use_ray"] and c["mode"] == "test":
        raise ConfigError("--mode test runs in one process; drop --use-ray.")
    if c["chat_template"] is not None:
        try:
            chat_templates.template_text(c["chat_template"])
        except chat_templates.ChatTemplateError as e:
            raise ConfigError(str(e)) from None
    if c["precision"] == "transformer-engine":
        check_transformer_engine(c["use_gpu"])
    if c["compile"]:
        check_compile(c, given)
    if "beta" in given and c["training_type"] != "dpo":
        raise ConfigError("--beta only applies to --training-type dpo.")
    for name in ("precompute_ref_log_probs", "rpo_alpha"):
        if name in given and c["training_type"] != "dpo":
            raise ConfigError(f"--{name.replace('_', '-')} only applies to --training-type dpo.")
    if c["rpo_alpha"] < 0:
        raise ConfigError(f"--rpo-alpha must not be negative (got {c['rpo_alpha']}).")
    for name in ("lambda_", "verifier_eval_rows", "verifier_k"):
        if name in given and c["training_type"] != "sft_verifier":
            raise ConfigError(f"--{name.rstrip('_').replace('_', '-')} only applies to --training-type sft_verifier.")
    if c["verifier_eval_rows"] < 0 or c["verifier_k"] < 1:
        raise ConfigError("--verifier-eval-rows must not be negative and --verifier-k must be at least 1.")
    if "packing" in given and c["training_type"] not in ("sft", "sft_verifier", "dpo", "bt"):
        raise ConfigError("--packing only applies to --training-type sft, sft_verifier, dpo and bt.")
    if "packing" in given and c["packing"] and c["length_penalty"] > 0:
        raise ConfigError("--length-penalty does not work with --packing yet (it samples a reply for each row's "
                          "prompt, and a packed row holds several conversations); drop one of them.")
    if "center_rewards_coefficient" in given and c["training_type"] != "bt":
        raise ConfigError("--center-rewards-coefficient only applies to --training-type bt.")
    if c["center_rewards_coefficient"] < 0:
        raise ConfigError(f"--center-rewards-coefficient must not be negative (got {c['center_rewards_coefficient']}).")
    endpoint_reward = c["training_type"] == "grpo" and (c["reward_model"] or "").startswith("openai:")
    win_rate_flags = ("judge", "judge_base_url", "judge_api_key_env", "reference_model", "win_rate_prompts",
                      "win_rate_temperature", "win_rate_top_p")
    for name in win_rate_flags:
        if name in given and not c["calculate_win_rate"] and not (endpoint_reward and name.startswith("judge_")):
            raise ConfigError(f"--{name.replace('_', '-')} only applies with --calculate-win-rate"
                              f"{' (or a grpo --reward-model openai:MODEL)' if name.startswith('judge_') else ''}.")
    validate_rl(c, given)
    validate_monitor(c, given)
    if c["calculate_win_rate"]:
        if c["training_type"] == "bt":
            raise ConfigError("--calculate-win-rate needs a generative model; a bt run trains a reward model "
                              "(use it as the --judge of a policy's run instead).")
        if not c["judge"]:
            raise ConfigError("--calculate-win-rate needs --judge: a reward model (folder, Hub name or bt run), "
                              "openai:MODEL, correctness or length.")
        if c["judge"].startswith("openai:") and not os.environ.get(c["judge_api_key_env"]):
            raise ConfigError(f"The endpoint judge reads its API key from ${c['judge_api_key_env']}, which is not "
                              f"set (choose another variable with --judge-api-key-env).")
        if c["win_rate_prompts"] < 1 or c["win_rate_temperature"] < 0 or not 0 < c["win_rate_top_p"] <= 1:
            raise ConfigError("--win-rate-prompts must be at least 1, --win-rate-temperature not negative "
                              "and --win-rate-top-p in (0, 1].")
    if c["num_workers"] < 1 or c["max_failures"] < -1:
        raise ConfigError("--num-workers must be at least 1 and --max-failures at least -1 (-1: retry forever).")
    if c["use_gpu"]:
        import torch
        if not torch.cuda.is_available():
            raise ConfigError("--use-gpu was given but no CUDA GPU is visible to this process.")
    positive = ("batch_size", "accumulate_grad_batches", "max_epochs", "check_val_every_n_epoch",
                "checkpoint_frequency", "ckpt_to_keep", "log_every_n_steps", "max_nonfinite_steps")
    for name in positive:
        if c[name] < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1 (got {c[name]}).")
    for name in ("train_dataset_length", "test_dataset_length"):
        if c[name] is not None and c[name] < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1 (got {c[name]}).")
    for name in ("train_percentile", "test_percentile"):
        if c[name] is not None and not 0 < c[name] <= 100:
            raise ConfigError(f"--{name.replace('_', '-')} must be in (0, 100] (got {c[name]}).")
    if c["checkpoint_every_n_steps"] is not None and c["checkpoint_every_n_steps"] < 1:
        raise ConfigError(f"--checkpoint-every-n-steps must be at least 1 (got {c['checkpoint_every_n_steps']}).")
    if c["force_resume"] and not (c["resume_from_checkpoint"] and c["mode"] == "train"):
        raise ConfigError("--force-resume only applies when resuming training with --resume-from-checkpoint.")
    if c["max_length"] < 2:
        raise ConfigError(f"--max-length must be at least 2 (got {c['max_length']}).")
    if c["lr"] <= 0:
        raise ConfigError(f"--lr must be positive (got {c['lr']}).")
    if not 0 <= c["warmup_ratio"] < 1:
        raise ConfigError(f"--warmup-ratio must be in [0, 1) (got {c['warmup_ratio']}).")
    if c["max_steps"] == 0 or c["max_steps"] < -1:
        raise ConfigError(f"--max-steps must be positive or -1 (got {c['max_steps']}).")
    for name in ("num_sanity_val_steps", "val_generations", "val_max_new_tokens"):
        if c[name] < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must not be negative (got {c[name]}).")
    if c["roundoff"] is not None and c["roundoff"] < 0:
        raise ConfigError(f"--roundoff must not be negative (got {c['roundoff']}).")


def validate_rl(c: dict, given: set) -> None:
    """grpo's flags, the sampling flags and the length penalty: where they apply, and their ranges."""
    grpo_only = ("num_generations", "advantage", "loss_aggregation", "num_iterations", "clip_range", "kl_coef",
                 "reward_funcs", "reward_weights", "reward_model", "reward_model_weight")
    for name in grpo_only:
        if name in given and c["training_type"] != "grpo":
            raise ConfigError(f"--{name.replace('_', '-')} only applies to --training-type grpo.")
    for name in ("length_penalty", "length_penalty_every"):
        if name in given and c["training_type"] != "sft":
            raise ConfigError(f"--{name.replace('_', '-')} only applies to --training-type sft.")
    samples = c["training_type"] == "grpo" or (c["training_type"] == "sft" and c["length_penalty"] > 0)
    for name in ("temperature", "top_p", "max_new_tokens"):
        if name in given and not samples:
            raise ConfigError(f"--{name.replace('_', '-')} only applies to --training-type grpo and to sft with "
                              f"--length-penalty (validation replies use --val-max-new-tokens).")
    if c["length_penalty"] < 0 or c["length_penalty_every"] < 1:
        raise ConfigError("--length-penalty must not be negative and --length-penalty-every must be at least 1.")
    if c["max_new_tokens"] < 1 or not 0 < c["top_p"] <= 1 or c["temperature"] < 0:
        raise ConfigError("--max-new-tokens must be at least 1, --top-p in (0, 1] and --temperature not negative.")
    if c["training_type"] != "grpo":
        return
    if c["num_generations"] < 2:
        raise ConfigError(f"--num-generations must be at least 2: advantages compare the completions of a prompt "
                          f"(got {c['num_generations']}).")
    if c["temperature"] <= 0:
        raise ConfigError("grpo needs --temperature above 0: greedy completions of a prompt are all the same, "
                          "so every advantage would be 0.")
    if c["num_iterations"] < 1 or c["clip_range"] <= 0 or c["kl_coef"] < 0:
        raise ConfigError("--num-iterations must be at least 1, --clip-range positive and --kl-coef not negative.")
    from rewards import RewardError, parse_reward_funcs
    try:
        funcs = parse_reward_funcs(c["reward_funcs"] if c["reward_funcs"] is not None
                                   else ("" if c["reward_model"] else "correctness"), c["reward_weights"])
    except RewardError as e:
        raise ConfigError(str(e)) from None
    if not funcs and not c["reward_model"]:
        raise ConfigError("grpo needs a reward: --reward-funcs and/or --reward-model.")
    if (c["reward_model"] or "").startswith("openai:") and not os.environ.get(c["judge_api_key_env"]):
        raise ConfigError(f"The endpoint reward model reads its API key from ${c['judge_api_key_env']}, which is "
                          f"not set (choose another variable with --judge-api-key-env).")


def validate_monitor(c: dict, given: set) -> None:
    """Early stopping and the best checkpoint."""
    for name in ("monitor", "monitor_mode"):
        if name in given and c["early_stopping_patience"] is None and not c["save_best"]:
            raise ConfigError(f"--{name.replace('_', '-')} only applies with --early-stopping-patience or --save-best.")
    if c["early_stopping_patience"] is not None and c["early_stopping_patience"] < 1:
        raise ConfigError(f"--early-stopping-patience must be at least 1 (got {c['early_stopping_patience']}).")
    if c["val_check_interval"] is not None and c["val_check_interval"] < 1:
        raise ConfigError(f"--val-check-interval must be at least 1 (got {c['val_check_interval']}).")
    if c["monitor"] is not None and not c["monitor"].startswith("val/"):
        raise ConfigError(f"--monitor must name a validation metric, val/<name> (got {c['monitor']!r}).")
    if c["save_best"] and c["use_ray"]:
        raise ConfigError("--save-best (and --early-stopping-patience, which implies it) does not work with "
                          "--use-ray yet: Ray keeps the checkpoints of a Ray run; drop --use-ray or the flag.")
    if c["early_stopping_patience"] is not None and c["use_ray"]:
        raise ConfigError("--early-stopping-patience does not work with --use-ray yet (it keeps the best "
                          "checkpoint, which Ray runs cannot); drop --use-ray or the flag.")


def monitor_settings(c: dict) -> tuple[str, str]:
    """The resolved (--monitor, --monitor-mode)."""
    metric = c["monitor"] or ("val/reward" if c["training_type"] == "grpo" else "val/loss")
    lower = ("loss", "perplexity", "edit_distance", "length")
    mode = c["monitor_mode"] or ("min" if any(w in metric.rsplit("/", 1)[-1] for w in lower) else "max")
    return metric, mode


def check_compile(c: dict, given: set) -> None:
    """--compile: where it applies, and whether torch.compile can run here."""
    if "compile" in given and c["mode"] != "train":
        raise ConfigError("--compile only applies to --mode train (evaluation runs without gradients, eagerly).")
    if c["strategy"] == "fsdp":
        raise ConfigError("--compile does not work with --strategy fsdp yet (torch.compile inside our FSDP "
                          "wrapping is untested and needs a GPU to test); use --strategy ddp or drop --compile.")
    from compilation import check_available
    reason = check_available(c["use_gpu"])
    if reason:
        raise ConfigError(reason)


def check_transformer_engine(use_gpu: bool) -> None:
    """FP8 through NVIDIA transformer-engine needs the package and a Hopper (or newer) GPU."""
    try:
        import transformer_engine  # noqa: F401
    except ImportError:
        raise ConfigError("--precision transformer-engine needs NVIDIA transformer-engine: "
                          "`pip install -r requirements-gpu.txt` on a machine with an H100/H200 (Hopper) GPU.") from None
    import torch
    if not use_gpu or not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9):
        raise ConfigError("--precision transformer-engine (FP8) needs --use-gpu and an H100/H200 (Hopper) or newer GPU.")


def resolve(config: dict) -> dict:
    """Fill the defaults that depend on other flags (model, data, run name, checkpoint)."""
    c = dict(config)
    if c["resume_from_checkpoint"]:
        ckpt_dir = storage.parent(c["resume_from_checkpoint"])
        if c["name"] is None and is_run_checkpoint_dir(ckpt_dir):
            # Continue in the folder the checkpoint came from.
            run = storage.parent(ckpt_dir)
            c["storage_path"], c["name"] = storage.parent(run), storage.basename(run)
    c["model_name"] = c["model_name"] or str(EMBEDDED_MODEL)
    c["dataset_name"] = c["dataset_name"] or str(EMBEDDED_DATA[c["training_type"]])
    # Local paths made absolute, so the config saved with each checkpoint loads from any
    # directory (a later --model-name runs/x, upload_to_hub, Ray workers). Hub names, URLs
    # and judges such as "length" are not local paths and stay as they are.
    for key in ("model_name", "dataset_name", "reference_model", "judge"):
        if c.get(key) and "://" not in c[key] and os.path.exists(c[key]):
            c[key] = os.path.abspath(c[key])
    c["chat_template"] = chat_templates.stored(c["chat_template"])
    if c["name"] is None:
        c["name"] = f"{c['training_type']}-{time.strftime('%Y%m%d-%H%M%S')}"
    if c["training_type"] == "grpo" and c["reward_funcs"] is None:
        c["reward_funcs"] = "" if c["reward_model"] else "correctness"
    if c["reward_model"] and "://" not in c["reward_model"] and os.path.exists(c["reward_model"]):
        c["reward_model"] = os.path.abspath(c["reward_model"])
    if c["early_stopping_patience"] is not None:
        c["save_best"] = True
    if c["length_penalty"] > 0 or c["training_type"] == "grpo":
        # The length penalty samples a reply for each row's prompt (one conversation a row);
        # grpo's rows are prompts, laid out at each rollout.
        c["packing"] = False
    if c["save_best"]:
        c["monitor"], c["monitor_mode"] = monitor_settings(c)
    return c


def run_dir(c: dict) -> str:
    return storage.join(c["storage_path"], c["name"])
