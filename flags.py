"""train.py's command line: every flag declared once, YAML defaults, and the defaults that
depend on other flags (model, data, run name, the checkpoint to resume and the config saved
with it). flag_checks.py refuses what cannot be honoured.

    config, given = parse_config(argv)   # flags (+ --config YAML, + a resumed run's config), by name
    flag_checks.validate(config, given)  # ConfigError for what we cannot honour
    config = resolve(config)             # embedded defaults, run name, run folder; a config.Config
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
from config import Config
from errors import ConfigError
from shared_flags import (BATCH_SIZE, DEFAULT_TRUNCATION, MAX_LENGTH, MAX_NEW_TOKENS, REWARD_POOLINGS, SEED,
                          TRUNCATION_MODES, judge_flags)

REPO = Path(__file__).resolve().parent
EMBEDDED_MODEL = REPO / "embedded" / "model"
EMBEDDED_DATA = {"sft": REPO / "embedded" / "data" / "sft", "dpo": REPO / "embedded" / "data" / "prefs",
                 "bt": REPO / "embedded" / "data" / "prefs", "sft_verifier": REPO / "embedded" / "data" / "problems",
                 "grpo": REPO / "embedded" / "data" / "problems", "orpo": REPO / "embedded" / "data" / "prefs",
                 "kto": REPO / "embedded" / "data" / "prefs"}
TRAINING_TYPES = ("sft", "dpo", "bt", "sft_verifier", "grpo", "orpo", "kto")
STRATEGIES = ("auto", "ddp", "fsdp")
PACKING_TYPES = ("sft", "sft_verifier", "dpo", "bt", "orpo", "kto")
# Pairwise losses compare two forwards (chosen, rejected); dropout would draw a different mask
# for each and add its noise to their difference (kto's: to the policy-reference log-ratio). TRL's
# DPO, reward, ORPO and KTO trainers turn it off too.
NO_DROPOUT_TYPES = ("dpo", "bt", "orpo", "kto")
NO_DROPOUT_NAMES = f"{', '.join(NO_DROPOUT_TYPES[:-1])} and {NO_DROPOUT_TYPES[-1]}"      # for sentences
# --dpo-loss: the keys of losses/preference.py's PREFERENCE_LOSSES, in its order (tested); named
# here because parsing flags imports no torch.
DPO_LOSSES = ("sigmoid", "ipo", "cdpo", "hinge", "simpo")
PRECISIONS = ("32-true", "bf16-true", "bf16-mixed", "16-mixed", "16-true", "transformer-engine")


def build_parser(suppress_defaults: bool = False) -> argparse.ArgumentParser:
    """Every flag, declared once with its default and help text."""
    p = argparse.ArgumentParser(description="Train or evaluate a language model (SFT, DPO, ORPO, KTO, BT reward models, GenRM-CoT "
                                            "verifiers, GRPO) locally or on Ray.",
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
             "short name (smollm2-135m-instruct, all-minilm-l6-v2; see README.md, Real models) (default: the bundled "
             "tiny Qwen2 model, embedded/model)")
    add("--dataset-name", type=str, default=None,
        help="Hub name, data file or folder (default: the bundled data set for the training type, embedded/data/)")
    add("--storage-path", type=str, default="runs", help="where run folders are written")
    add("--name", type=str, default=None, help="run folder name (default: <training-type>-<date>-<time>)")
    add("--seed", type=int, default=SEED, help="seed for weights init, data order and sampling")
    add("--verbose", action=flag, default=False, help="debug logging, library warnings")
    add("--roundoff", type=int, default=None, help="round logged metric values to this many digits")
    add("--trust-remote-code", action=flag, default=False, help="allow model code from the Hub (off for safety)")
    add("--chat-template", type=str, default=None, help=chat_templates.HELP)

    group("optimisation")
    add("--max-epochs", type=int, default=1, help="epochs over the training set")
    add("--max-steps", type=int, default=-1, help="stop after this many optimizer steps (-1: no limit)")
    add("--batch-size", type=int, default=BATCH_SIZE, help="rows per micro-batch, per worker")
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
    add("--disable-dropout", action=flag, default=None,
        help="set every dropout probability of the trained model to 0 (default: on for "
             f"{NO_DROPOUT_NAMES}, whose losses would see two dropout masks in one difference; off for the "
             "others)")
    add("--compile", action=flag, default=False,
        help="torch.compile the training forward (the decoder or reward model's base model, dynamic shapes): "
             "faster steps after a first step that compiles (about a minute on CPU); validation, reference "
             "log-probs and generation stay eager; not with --strategy fsdp (see bench/README.md)")
    add("--max-length", type=int, default=MAX_LENGTH, help="truncate tokenized conversations to this many tokens")
    add("--truncation", choices=TRUNCATION_MODES, default=DEFAULT_TRUNCATION,
        help="how a conversation longer than --max-length is cut: keep_start keeps its first tokens (a reply "
             "cut away drops the row), keep_end drops the oldest prompt tokens first and keeps the reply "
             "(long multi-turn prompts, as in hh-rlhf); reward-model judges always keep the end")
    add("--packing", action=flag, default=True,
        help="sft, sft_verifier, dpo, bt: pack each micro-batch's sequences into rows no longer than its "
             "longest (first-fit decreasing; position_ids restart at each one and attention stays within it) "
             "where that saves rows, instead of one padded row each; same loss and gradients, less padding "
             "(see bench/README.md)")
    add("--precision", choices=PRECISIONS, default="32-true", help="Lightning precision")
    add("--dpo-loss", choices=DPO_LOSSES, default="sigmoid",
        help="dpo: the preference loss (losses/preference.py; docs/preference_losses.md): sigmoid DPO "
             "(Rafailov et al. 2023), ipo (Azar et al. 2023, length-averaged log-ratios as in TRL), cdpo "
             "(conservative DPO, --label-smoothing), hinge (SLiC), or simpo (Meng et al. 2024: reference-free, "
             "length-normalised, --simpo-gamma; no reference model is loaded)")
    add("--beta", type=float, default=0.1,
        help="dpo: beta of every --dpo-loss (the seed used 1.0 and 2.0); ipo's tau (the target is 1/(2 tau)); "
             "for simpo set it yourself, the paper used 2.0 to 2.5. kto: beta of its log-ratios (TRL's default 0.1)")
    add("--rpo-alpha", type=float, default=0.0,
        help="DPO (--dpo-loss sigmoid): weight of the NLL term on the chosen reply, L_DPO + a * NLL(y_w)/|y_w| "
             "(RPO, Pang et al. 2024; 0: off, the paper used 1)")
    add("--label-smoothing", type=float, default=0.0,
        help="--dpo-loss cdpo (needs it above 0): the probability e in [0, 0.5) that a preference label is "
             "flipped, L = (1 - e) (-log sigma(beta h)) + e (-log sigma(-beta h)); Mitchell's note uses 0.1 "
             "as an example")
    add("--simpo-gamma", type=float, default=0.5,
        help="--dpo-loss simpo: the target reward margin gamma, -log sigma(beta logp_w/|y_w| - beta "
             "logp_l/|y_l| - gamma) (TRL's simpo_gamma; the paper's gamma/beta is about 0.5)")
    add("--precompute-ref-log-probs", action=flag, default=True,
        help="DPO: compute the reference log-probs once before training and keep them with the data "
             "(no reference model in memory while training); --no-... runs the reference live")
    add("--orpo-lambda", type=float, default=0.1,
        help="orpo: weight lambda of the odds-ratio term, L = -log P(y_w|x) + lambda * L_OR with log P the mean "
             "token log-prob (Hong et al. 2024; the paper's 0.1, TRL's beta); no reference model is loaded")
    add("--kto-desirable-weight", type=float, default=1.0,
        help="kto: weight lambda_D of the desirable rows' loss (TRL's desirable_weight); the paper advises "
             "lambda_D n_D / (lambda_U n_U) in [1, 4/3] for n_D desirable and n_U undesirable rows")
    add("--kto-undesirable-weight", type=float, default=1.0,
        help="kto: weight lambda_U of the undesirable rows' loss (TRL's undesirable_weight)")
    add("--center-rewards-coefficient", type=float, default=0.0,
        help="bt: weight c of the reward-centering term c * E[(r_w + r_l)^2] (0: off)")
    add("--reward-pooling", choices=REWARD_POOLINGS, default="auto",
        help="bt with an encoder (BERT-style) reward model: what its score head reads. auto: the folder's own way "
             "(a sentence-transformers folder's token mean, else the [CLS] pooler); cls; mean: the mean over every "
             "real token; reply: the mean over the last reply's tokens only, so the prompt that both replies of a "
             "pair share does not dilute their difference. Saved with the model, so its judges score alike. "
             "Decoders read the reply's last token and take only auto")
    add("--lambda", dest="lambda_", metavar="LAMBDA", type=float, default=0.1,
        help="GenRM weight of the generation term, L_verify + lambda * L_correct (sft_verifier)")

    group("adapters (LoRA, through peft)")
    add("--lora-r", type=int, default=0,
        help="train LoRA adapters of this rank on a frozen base model (peft; every training type; a bt reward "
             "model's score head trains whole); 0: no adapters, every weight trains")
    add("--lora-alpha", type=float, default=16.0, help="LoRA's alpha: the adapters' update is scaled by alpha / r")
    add("--lora-dropout", type=float, default=0.05,
        help=f"dropout on the adapters' input (zeroed by --disable-dropout, on by default for {NO_DROPOUT_NAMES})")
    add("--lora-target-modules", type=str, default=None,
        help="comma-separated names of the modules that get adapters (e.g. q_proj,v_proj), or all-linear "
             "(every linear layer but the output layer) (default: every attention and MLP projection of a "
             "Llama/Qwen2-style decoder, query,key,value,dense of a BERT-style encoder, all-linear otherwise)")
    add("--use-dora", action=flag, default=False,
        help="weight-decomposed adapters (DoRA, Liu et al. 2024): a trained magnitude per output beside the LoRA direction")
    add("--load-in-4bit", action=flag, default=False,
        help="QLoRA: hold the frozen base model in 4-bit NF4 (bitsandbytes, a CUDA GPU) and train the adapters on it")

    group("online RL (grpo) and sampling")
    add("--num-generations", type=int, default=4, help="grpo: completions sampled per prompt (the group)")
    add("--temperature", type=float, default=1.0,
        help="sampling temperature of grpo rollouts and of --length-penalty samples")
    add("--top-p", type=float, default=1.0, help="nucleus sampling top-p of those samples")
    add("--max-new-tokens", type=int, default=MAX_NEW_TOKENS,
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
    add("--val-max-new-tokens", type=int, default=MAX_NEW_TOKENS, help="token budget of those replies")
    add("--verifier-eval-rows", type=int, default=8,
        help="sft_verifier: score the first N verify rows of the test split at every validation "
             "(val/verifier_score, val/verifier_accuracy; 0: off); each row samples --verifier-k rationales "
             "of up to --val-max-new-tokens tokens")
    add("--verifier-k", type=int, default=4, help="sft_verifier: rationales sampled per scored row in validation")
    add("--calculate-win-rate", action=flag, default=False,
        help="at every validation, log val/win_rate of the policy's replies against the reference model's, "
             "as scored by --judge (ties count half); per-prompt records go to <run>/win_rate/")
    judge_flags(add, help="win-rate judge: a reward-model folder, Hub name or bt run; openai:MODEL for an "
                          "OpenAI-compatible endpoint; correctness (final answer equals the reference's); length "
                          "(longer wins: a bias probe)")
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


def can_pack(training_type: str, length_penalty: float) -> bool:
    """Whether --packing applies: the types whose rows are whole conversations, one each. grpo's rows
    are prompts, laid out at each rollout; the length penalty samples a reply for each row's prompt."""
    return training_type in PACKING_TYPES and not length_penalty > 0


def monitor_settings(c: dict) -> tuple[str, str]:
    """The resolved (--monitor, --monitor-mode)."""
    metric = c["monitor"] or ("val/reward" if c["training_type"] == "grpo" else "val/loss")
    lower = ("loss", "perplexity", "edit_distance", "length")
    mode = c["monitor_mode"] or ("min" if any(w in metric.rsplit("/", 1)[-1] for w in lower) else "max")
    return metric, mode


def resolve(config: dict) -> Config:
    """Fill the defaults that depend on other flags (model, data, run name, checkpoint), and
    group the result (config.Config)."""
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
    if c["disable_dropout"] is None:
        c["disable_dropout"] = c["training_type"] in NO_DROPOUT_TYPES
    c["packing"] = c["packing"] and can_pack(c["training_type"], c["length_penalty"])
    if c["save_best"]:
        c["monitor"], c["monitor_mode"] = monitor_settings(c)
    return Config.from_flat(c)


def run_dir(c: Config) -> str:
    return storage.join(c.run.storage_path, c.run.name)
