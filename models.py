"""Loading models and tokenizers: Hugging Face folders, Hub names, and train.py checkpoints or
run folders (local or s3://, exported once to a cache folder), for every entry point.

    tokenizer = load_tokenizer("Qwen/Qwen2.5-0.5B")          # pad token set when missing
    model = load_model("bt", "runs/sft-demo", tokenizer)      # the network a training type trains
    model, tokenizer = load_trained("runs/dpo-demo")          # generate with a finished run
    model, tokenizer, config, step = load_checkpoint("runs/sft-demo/checkpoints/last.ckpt")

    export("runs/sft-demo", "exported/sft-demo")              # a checkpoint as a Hugging Face folder
    export("runs/lora", "exported/lora", adapter_only=True)   # a --lora-r run's adapter folder (peft) alone

Every failure to load is a ModelLoadError (or errors.ConfigError) whose message is one sentence.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile

import torch

import adapters
import packaged_models
import storage
from checkpoints import find_checkpoint, read_checkpoint
from errors import ConfigError, first_line
from model_card import final_metrics, model_card, shown_name
from packaged_models import ModelLoadError


def _check_local(name_or_path: str) -> None:
    if name_or_path.startswith((".", "/", "~")) and not os.path.isdir(os.path.expanduser(name_or_path)):
        raise ModelLoadError(f"Model folder {name_or_path} does not exist.")


def pretrained_path(name_or_path: str) -> str:
    """Where from_pretrained finds a model: Hugging Face folders and Hub names as they are; a
    packaged model's short name or a .gguf file is its cached folder (packaged_models.py); a
    train.py checkpoint or run folder (local or s3://) is exported once (`export`)
    into a local cache folder keyed by the checkpoint's path, size and modification time, so
    `--model-name runs/sft` starts a DPO run from the SFT run's last checkpoint."""
    name_or_path = packaged_models.resolve(name_or_path)
    if not is_checkpoint_path(name_or_path):
        return name_or_path
    import hashlib
    ckpt = find_checkpoint(name_or_path, best=True)
    info = storage.info(ckpt)
    key = json.dumps([storage.absolute(ckpt), info.get("size"), str(info.get("mtime") or info.get("LastModified"))])
    folder = os.path.join(packaged_models.cache_root(), "exported", hashlib.sha256(key.encode()).hexdigest()[:16])
    if not os.path.isdir(folder):
        # The workers of a Ray run export the same checkpoint at once: each writes its own folder
        # and the first to rename it into place wins (export alone would replace, deleting it
        # first, a folder that another worker may be loading).
        mine = os.path.join(os.path.dirname(folder), f".{os.path.basename(folder)}-{os.getpid()}")
        export(ckpt, mine)
        publish(mine, folder)
    return folder


def publish(mine: str, folder: str) -> None:
    """Rename the folder `mine` to `folder` unless `folder` exists, in which case `mine` is removed."""
    try:
        os.rename(mine, folder)     # fails if folder exists and is not empty: never replaces it
    except OSError:
        if not os.path.isdir(folder):
            raise
        shutil.rmtree(mine, ignore_errors=True)


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False, chat_template: str | None = None):
    """The tokenizer, with a pad token, and `chat_template` (chat_templates.py: a built-in name, file
    or text) in place of its own where given."""
    import chat_templates
    from transformers import AutoTokenizer
    name_or_path = pretrained_path(name_or_path)
    _check_local(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except Exception as e:  # noqa: BLE001 - hub/file errors come in many types
        raise ModelLoadError(f"Could not load the tokenizer of '{name_or_path}': "
                             f"{first_line(e)}") from None
    if tokenizer.pad_token_id is None:
        # Padding positions are masked out, so any id works; eos is what most chat models use.
        tokenizer.pad_token = tokenizer.eos_token
    try:
        return chat_templates.apply(tokenizer, chat_template)
    except chat_templates.ChatTemplateError as e:
        raise ModelLoadError(str(e)) from None


def load_causal_lm(name_or_path: str, trust_remote_code: bool = False, load_in_4bit: bool = False):
    """AutoModelForCausalLM in float32 (or, --load-in-4bit, a 4-bit NF4 base: adapters.quantization_kwargs)."""
    from transformers import AutoModelForCausalLM
    name_or_path = pretrained_path(name_or_path)
    _check_local(name_or_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=torch.float32,
                                                     trust_remote_code=trust_remote_code,
                                                     **adapters.quantization_kwargs(load_in_4bit))
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"Could not load the model '{name_or_path}': {first_line(e)}") from None
    _log_source(name_or_path)
    return model


def sentence_pooling(folder: str) -> str:
    """"mean" for a sentence-transformers folder that pools by the mean of its tokens, else
    "cls" (the classifier's own pooler)."""
    path = os.path.join(folder, "1_Pooling", "config.json")
    if os.path.isfile(path):
        with open(path) as f:
            if json.load(f).get("pooling_mode_mean_tokens"):
                return "mean"
    return "cls"


def load_reward_model(name_or_path: str, pad_token_id: int, trust_remote_code: bool = False,
                      load_in_4bit: bool = False, pooling: str = "auto"):
    """AutoModelForSequenceClassification with one output. A causal-LM checkpoint (e.g. an SFT
    model) gets a new score head, initialised from the current torch seed. `pooling` (an
    encoder's, shared_flags.REWARD_POOLINGS): "auto" keeps what the folder says (a saved
    reward_pooling, else sentence_pooling); another value replaces it."""
    from transformers import AutoModelForSequenceClassification
    name_or_path = pretrained_path(name_or_path)
    _check_local(name_or_path)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            name_or_path, num_labels=1, dtype=torch.float32, trust_remote_code=trust_remote_code,
            **adapters.quantization_kwargs(load_in_4bit))
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"Could not load '{name_or_path}' as a reward model: {first_line(e)}") from None
    # Our pooling reads the attention mask, but HF's own forward (and users) look for the pad id here.
    model.config.pad_token_id = pad_token_id
    linear_head = isinstance(getattr(model, "classifier", None), torch.nn.Linear)      # BERT's: pooled -> score
    if pooling != "auto":
        if not linear_head:
            raise ConfigError(f"--reward-pooling {pooling} applies to encoder (BERT-style) reward models; "
                              f"{type(model).__name__} reads each reply's last token: leave it at auto.")
        model.config.reward_pooling = pooling
    elif linear_head and getattr(model.config, "reward_pooling", None) is None:
        # An encoder is read the way it was trained to summarise: a sentence-transformers
        # folder says how (1_Pooling/config.json); mean pooling beats BERT's untuned [CLS]
        # pooler there. Saved in config.json, so a trained run and its export score alike.
        model.config.reward_pooling = sentence_pooling(name_or_path)
    _log_source(name_or_path)
    return model


def _log_source(folder: str) -> None:
    """Say so when the weights were dequantized from a GGUF file (a cached folder or an export of a run from one)."""
    source = packaged_models.source(folder)
    if source:
        logging.getLogger("models").info("%s: %s", folder, packaged_models.describe(source))


def load_model(training_type: str, name_or_path: str, tokenizer, trust_remote_code: bool = False,
               load_in_4bit: bool = False, reward_pooling: str = "auto"):
    """The network a training type trains: a scalar reward model for bt, else a causal LM."""
    if training_type == "bt":
        return load_reward_model(name_or_path, tokenizer.pad_token_id, trust_remote_code, load_in_4bit, reward_pooling)
    return load_causal_lm(name_or_path, trust_remote_code, load_in_4bit)


def disable_dropout(model: torch.nn.Module) -> int:
    """Set every dropout probability in `model` to 0, in place; returns how many were above 0.
    Dropout modules are zeroed, and so are the float rates that attention layers pass to their
    kernels (Llama's and Qwen's `attention_dropout`, copied from the config when built)."""
    changed = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            changed += module.p > 0
            module.p = 0.0
        rate = getattr(module, "attention_dropout", None)
        if isinstance(rate, float):
            changed += rate > 0
            module.attention_dropout = 0.0
    return changed


def load_checkpoint(ckpt_path: str):
    """A train.py checkpoint (.ckpt, run folder or Ray checkpoint; local or s3://) ->
    (model with the trained weights, tokenizer, saved config, global step). A --lora-r run's
    model comes adapted (adapters.py) on its base loaded in full precision (also after
    --load-in-4bit: an export merges into the full-precision weights)."""
    ckpt_path = find_checkpoint(ckpt_path, best=True)
    checkpoint = read_checkpoint(ckpt_path)
    if not isinstance(checkpoint, dict):
        raise ConfigError(f"Checkpoint {ckpt_path} was not written by train.py (not a Lightning checkpoint).")
    config = checkpoint.get("hyper_parameters") or {}
    if "model_name" not in config or "training_type" not in config:
        raise ConfigError(f"Checkpoint {ckpt_path} was not written by train.py (no saved config).")
    remote = config.get("trust_remote_code", False)
    tokenizer = load_tokenizer(config["model_name"], remote, config.get("chat_template"))
    model = load_model(config["training_type"], config["model_name"], tokenizer, remote)
    weights = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    lora = adapters.settings_of(config)
    if lora is not None:        # the checkpoint holds the adapters only: the frozen base comes from model_name
        adapters.add_adapters(model, dataclasses.replace(lora, load_in_4bit=False), config["training_type"])
        weights = adapters.with_frozen(weights, model, "", ckpt_path)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError:
        raise ConfigError(f"Checkpoint {ckpt_path} does not match the architecture of "
                          f"{config['model_name']}.") from None
    return model, tokenizer, config, checkpoint.get("global_step")


def is_checkpoint_path(name_or_path: str) -> bool:
    """A train.py checkpoint rather than a Hugging Face folder or Hub name."""
    if name_or_path.endswith(".ckpt"):
        return True
    if "://" not in name_or_path and not os.path.isdir(name_or_path):
        return False
    try:
        return storage.isdir(name_or_path) and "config.json" not in storage.listdir(name_or_path)
    except Exception:  # noqa: BLE001 - unreachable storage: let the loader report it
        return False


def load_trained(name_or_path: str, kind: str = "causal", trust_remote_code: bool = False,
                 chat_template: str | None = None):
    """A model to generate with ("causal") or to score with ("reward") and its tokenizer, from
    a Hugging Face folder, a Hub name or a train.py checkpoint / run folder. A reward model is
    refused where a generator is needed and the other way round (a causal LM would get a
    randomly initialised score head: a judge that silently scores noise). `chat_template`
    replaces the tokenizer's template (chat_templates.py)."""
    from transformers import AutoConfig
    path = pretrained_path(name_or_path)
    _check_local(path)
    try:
        architectures = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code).architectures or []
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"Could not load the model '{name_or_path}': {first_line(e)}") from None
    is_reward = any(a.endswith("ForSequenceClassification") for a in architectures)
    if is_reward != (kind == "reward"):
        raise ConfigError(f"{name_or_path} is {'a reward model' if is_reward else 'a generative model'}; "
                          f"{'a reward model (a bt run or export)' if kind == 'reward' else 'a generative model'} "
                          f"is needed here.")
    tokenizer = load_tokenizer(path, trust_remote_code, chat_template)
    return load_model("bt" if kind == "reward" else "sft", path, tokenizer, trust_remote_code), tokenizer


def export(ckpt_path: str, output_dir: str, training_type: str | None = None, adapter_only: bool = False) -> dict:
    """Write the Hugging Face folder of a checkpoint (.ckpt, run folder or Ray checkpoint; local or
    s3://): safetensors weights, config, tokenizer with its chat template, the GGUF provenance of
    its base model where there is one, and a model card; returns the checkpoint's config. A --lora-r
    checkpoint's adapters are merged into the weights (peft's merge_and_unload), or with
    `adapter_only` written as peft's adapter folder alone (adapter_config.json and
    adapter_model.safetensors, for PeftModel.from_pretrained on the base model). The
    folder is written under a temporary name and moved into place: an interrupted export leaves
    nothing half-written."""
    ckpt_path = find_checkpoint(ckpt_path, best=True)
    model, tokenizer, config, step = load_checkpoint(ckpt_path)
    if training_type and training_type != config["training_type"]:
        raise ConfigError(f"Checkpoint {ckpt_path} is a {config['training_type']} checkpoint, "
                          f"not {training_type}.")
    if adapter_only and not adapters.is_adapted(model):
        raise ConfigError(f"--adapter-only applies to checkpoints of --lora-r runs; {ckpt_path} was trained "
                          f"without adapters.")
    if adapters.is_adapted(model) and not adapter_only:
        model = adapters.merged(model)
    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        model.config.name_or_path = shown_name(config["model_name"])
        # Every process writes a whole folder: inside a process group (a Ray Train worker)
        # transformers writes weights and config on rank 0 only, and the other workers' exports
        # of a --model-name or --reward-model run folder had neither.
        model.should_save_on_this_rank = lambda is_main_process: is_main_process
        if adapter_only:
            adapters.save_adapter(model, tmp, model.config.name_or_path)
        else:
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
