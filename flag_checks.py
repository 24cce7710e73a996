"""Refuse the flags we cannot honour and inconsistent flag combinations, one sentence each
(a ConfigError), before anything is loaded. Checked by flag name, on parse_config's dict.

    config, given = flags.parse_config(argv)
    validate(config, given)
"""
from __future__ import annotations

import os

import chat_templates
from errors import ConfigError
from flags import NO_DROPOUT_NAMES, NO_DROPOUT_TYPES, PACKING_TYPES, STRATEGIES, can_pack


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
    validate_dpo(c, given)
    validate_lora(c, given)
    for name in ("lambda_", "verifier_eval_rows", "verifier_k"):
        if name in given and c["training_type"] != "sft_verifier":
            raise ConfigError(f"--{name.rstrip('_').replace('_', '-')} only applies to --training-type sft_verifier.")
    if c["verifier_eval_rows"] < 0 or c["verifier_k"] < 1:
        raise ConfigError("--verifier-eval-rows must not be negative and --verifier-k must be at least 1.")
    if "packing" in given and c["training_type"] not in PACKING_TYPES:
        raise ConfigError(f"--packing only applies to --training-type {', '.join(PACKING_TYPES[:-1])} and "
                          f"{PACKING_TYPES[-1]}.")
    if "packing" in given and c["packing"] and not can_pack(c["training_type"], c["length_penalty"]):
        raise ConfigError("--length-penalty does not work with --packing yet (it samples a reply for each row's "
                          "prompt, and a packed row holds several conversations); drop one of them.")
    for name in ("center_rewards_coefficient", "reward_pooling"):
        if name in given and c["training_type"] != "bt":
            raise ConfigError(f"--{name.replace('_', '-')} only applies to --training-type bt.")
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


def validate_dpo(c: dict, given: set) -> None:
    """The preference types' flags (dpo, orpo, kto): where they apply (each --dpo-loss's own
    hyper-parameters to that loss only), and their ranges."""
    owners = {**dict.fromkeys(("dpo_loss", "precompute_ref_log_probs", "rpo_alpha", "label_smoothing", "simpo_gamma"),
                              ("dpo",)),
              "beta": ("dpo", "kto"), "orpo_lambda": ("orpo",),
              "kto_desirable_weight": ("kto",), "kto_undesirable_weight": ("kto",)}
    for name, types in owners.items():
        if name in given and c["training_type"] not in types:
            raise ConfigError(f"--{name.replace('_', '-')} only applies to --training-type {' and '.join(types)}.")
    if c["rpo_alpha"] < 0:
        raise ConfigError(f"--rpo-alpha must not be negative (got {c['rpo_alpha']}).")
    if c["orpo_lambda"] < 0:
        raise ConfigError(f"--orpo-lambda must not be negative (got {c['orpo_lambda']}; 0 leaves the NLL term alone).")
    if c["kto_desirable_weight"] <= 0 or c["kto_undesirable_weight"] <= 0:
        raise ConfigError(f"--kto-desirable-weight and --kto-undesirable-weight must be positive (got "
                          f"{c['kto_desirable_weight']} and {c['kto_undesirable_weight']}).")
    if c["training_type"] in owners["beta"] and c["beta"] <= 0:
        raise ConfigError(f"--beta must be positive (got {c['beta']}).")
    if c["training_type"] != "dpo":
        return
    from losses.preference import LOSS_PARAMS, PREFERENCE_LOSSES      # torch: only for a dpo run, which loads it next
    loss = PREFERENCE_LOSSES[c["dpo_loss"]]
    for name in LOSS_PARAMS:
        if name in given and name not in loss.params:
            owner = next(n for n, spec in PREFERENCE_LOSSES.items() if name in spec.params)
            raise ConfigError(f"--{name.replace('_', '-')} only applies to --dpo-loss {owner} "
                              f"(this run's is {c['dpo_loss']}).")
    if loss.reference_free and "precompute_ref_log_probs" in given:
        raise ConfigError(f"--precompute-ref-log-probs does not apply to --dpo-loss {c['dpo_loss']}, which is "
                          f"reference-free: no reference model is loaded and no reference log-probs computed.")
    if not 0 <= c["label_smoothing"] < 0.5:
        raise ConfigError(f"--label-smoothing must be in [0, 0.5): it is the probability that a preference label "
                          f"is flipped (got {c['label_smoothing']}).")
    if c["dpo_loss"] == "cdpo" and c["label_smoothing"] == 0:
        raise ConfigError("--dpo-loss cdpo needs --label-smoothing above 0 (with 0 it is --dpo-loss sigmoid); "
                          "e.g. --label-smoothing 0.1.")
    if c["simpo_gamma"] < 0:
        raise ConfigError(f"--simpo-gamma must not be negative (got {c['simpo_gamma']}).")


def validate_lora(c: dict, given: set) -> None:
    """The adapter flags: --load-in-4bit's hardware, the others only with --lora-r above 0, and their ranges."""
    if c["load_in_4bit"]:
        from adapters import qlora_unavailable
        reason = qlora_unavailable()
        if reason:
            raise ConfigError(reason)
        if not c["use_gpu"]:
            raise ConfigError("--load-in-4bit (QLoRA) needs --use-gpu: the 4-bit base lives on the GPU.")
    if c["lora_r"] < 0:
        raise ConfigError(f"--lora-r must not be negative (got {c['lora_r']}; 0 turns adapters off).")
    if c["lora_r"] == 0:
        for name in ("lora_alpha", "lora_dropout", "lora_target_modules", "use_dora", "load_in_4bit"):
            if name in given:
                raise ConfigError(f"--{name.replace('_', '-')} only applies with --lora-r above 0 (LoRA adapters).")
        return
    if c["lora_alpha"] <= 0 or not 0 <= c["lora_dropout"] < 1:
        raise ConfigError(f"--lora-alpha must be positive and --lora-dropout in [0, 1) (got {c['lora_alpha']} "
                          f"and {c['lora_dropout']}).")
    if c["lora_target_modules"] is not None and not c["lora_target_modules"].strip(", "):
        raise ConfigError("--lora-target-modules needs at least one module name (or all-linear).")
    dropout_off = c["disable_dropout"] if c["disable_dropout"] is not None else c["training_type"] in NO_DROPOUT_TYPES
    if "lora_dropout" in given and c["lora_dropout"] > 0 and dropout_off:
        raise ConfigError(f"--lora-dropout would be zeroed by --disable-dropout (on by default for "
                          f"{NO_DROPOUT_NAMES}); give --no-disable-dropout too, or drop --lora-dropout.")
    if c["strategy"] == "fsdp":
        raise ConfigError("--lora-r does not work with --strategy fsdp yet (FSDP over a frozen base with trained "
                          "adapters is untested here, and needs GPUs to test); use --strategy ddp.")


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
