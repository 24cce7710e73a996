"""LoRA and DoRA adapters through the peft library (--lora-r above 0), for every training type.

    model = add_adapters(model, c.lora, "bt")    # peft's get_peft_model; the base frozen, the adapters (and
                                                 # a reward model's score head) train
    with reference_mode(model) as ref: ...       # the starting model: adapters disabled (peft's disable_adapter())
    keep_trainable(state_dict, model, "model.")  # what a checkpoint keeps: the tensors that train, nothing frozen
    with_frozen(state_dict, model, "model.", where)  # and the frozen base put back when one is loaded
    merged(model) / save_adapter(model, folder)  # export: merge_and_unload(), or the adapter folder alone

`get_peft_model` injects the LoRA layers into the Hugging Face model in place and wraps it in a
PeftModel. The trainer goes on training the Hugging Face model itself (the same object, now
adapted), so everything that reads its parts (logprobs.py's decoder and head, reward_model.py's
base_model and score, generation, --compile) works unchanged, and the PeftModel is kept beside
it, outside the module tree (like compilation.py's compiled callable), for what only it does:
disable_adapter(), merge_and_unload() and save_pretrained() of the adapter. LoRA B starts at
zero, so at step 0 the adapted model computes exactly what the base model does.

A leaf above config and errors: models.py, module.py and train.py import it.
"""
from __future__ import annotations

import contextlib
import logging

import torch

from config import LoraArgs
from errors import ConfigError, first_sentence

log = logging.getLogger("train")

ATTRIBUTE = "_peft_model"       # the PeftModel, in the adapted model's __dict__
ALL_LINEAR = "all-linear"       # peft's name for every linear layer but the output layer
# The layers that get adapters when --lora-target-modules is not given, by config.model_type:
# every attention and MLP projection of a decoder block (QLoRA, Dettmers et al. 2023, arXiv
# 2305.14314: adapting all of a block's linear layers is what matches full fine-tuning, where
# the original LoRA adapted q and v only), and every linear layer of a BERT-style encoder block.
DECODER_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DEFAULT_TARGETS = {**{t: DECODER_TARGETS for t in ("llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "phi3")},
                   **{t: ("query", "key", "value", "dense") for t in ("bert", "roberta", "xlm-roberta")}}
REWARD_HEADS = ("score", "classifier")      # a decoder reward model's head, an encoder's


def target_modules(lora: LoraArgs, model) -> list[str] | str:
    """--lora-target-modules as peft takes it: a list of module names, or "all-linear"; by default
    DEFAULT_TARGETS for the model's architecture, all-linear for one not in the table."""
    if lora.lora_target_modules:
        names = [n.strip() for n in lora.lora_target_modules.split(",") if n.strip()]
        return ALL_LINEAR if names == [ALL_LINEAR] else names
    return list(DEFAULT_TARGETS.get(getattr(model.config, "model_type", None), ())) or ALL_LINEAR


def peft_of(model):
    """The PeftModel of a model adapted by add_adapters, else None."""
    return model.__dict__.get(ATTRIBUTE)


def is_adapted(model) -> bool:
    return peft_of(model) is not None


def add_adapters(model, lora: LoraArgs, training_type: str):
    """`model` with LoRA (or DoRA) adapters on its target modules, everything else frozen but a
    bt reward model's score head (trained whole: peft's modules_to_save); the same object,
    returned for convenience. A model already adapted is returned as it is."""
    if is_adapted(model):
        return model
    from peft import LoraConfig, TaskType, get_peft_model
    reward = training_type == "bt"
    head = [n for n in REWARD_HEADS if isinstance(getattr(model, n, None), torch.nn.Module)][:1] if reward else None
    targets = target_modules(lora, model)
    config = LoraConfig(r=lora.lora_r, lora_alpha=lora.lora_alpha, lora_dropout=lora.lora_dropout,
                        target_modules=targets, use_dora=lora.use_dora, modules_to_save=head,
                        task_type=TaskType.SEQ_CLS if reward else TaskType.CAUSAL_LM)
    if lora.load_in_4bit:
        from peft import prepare_model_for_kbit_training
        # Norms and the head kept in float32; activation checkpointing stays --activation-checkpointing's.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as e:     # e.g. a target module name the model does not have
        raise ConfigError(f"--lora-target-modules {lora.lora_target_modules or ','.join(targets)}: "
                          f"{first_sentence(e)}.") from None
    # object.__setattr__: nn.Module.__setattr__ would register the wrapper as a submodule of the
    # model it wraps (a loop in the module tree, and every parameter twice in state_dict).
    object.__setattr__(model, ATTRIBUTE, peft_model)
    trainable, total = peft_model.get_nb_trainable_parameters()
    log.info("%s r=%d alpha=%g on %s%s: %s of %s parameters train (%.2f%%)", "DoRA" if lora.use_dora else "LoRA",
             lora.lora_r, lora.lora_alpha, targets if isinstance(targets, str) else ",".join(targets),
             f" (+ the whole {head[0]} head)" if head else "", f"{trainable:,}", f"{total:,}", 100 * trainable / total)
    return model


@contextlib.contextmanager
def reference_mode(model):
    """The starting model, for reference log-probs: `model` with its adapters (and a trained
    copy of its head) disabled by peft's disable_adapter(), in eval mode (no dropout, as a frozen
    reference copy runs); put back as it was on leaving."""
    was_training = model.training
    model.eval()
    try:
        with peft_of(model).disable_adapter():
            yield model
    finally:
        model.train(was_training)


def trainable_names(model, prefix: str = "") -> set[str]:
    return {prefix + name for name, p in model.named_parameters() if p.requires_grad}


def keep_trainable(state_dict: dict, model, prefix: str) -> dict:
    """The entries of a state_dict (keys `prefix` + the model's names; others, not the model's,
    kept) that train: the adapters and modules_to_save, never the frozen base."""
    keep = trainable_names(model, prefix)
    return {k: v for k, v in state_dict.items() if k in keep or not k.startswith(prefix)}


def with_frozen(state_dict: dict, model, prefix: str, where: str) -> dict:
    """A checkpoint's state_dict (keep_trainable's) completed with the frozen base weights the
    model holds now (loaded from the run's --model-name), so it loads strictly; a ConfigError
    when its model tensors are not exactly this run's trainable ones."""
    want = trainable_names(model, prefix)
    have = {k for k in state_dict if k.startswith(prefix)}
    current = {prefix + k: v for k, v in model.state_dict().items()}
    reshaped = [k for k in have & want if state_dict[k].shape != current[k].shape]
    if have != want or reshaped:
        raise ConfigError(f"Checkpoint {where} does not hold this run's trainable weights ({len(have - want)} "
                          f"tensors not trained here, {len(want - have)} missing, {len(reshaped)} of another "
                          f"shape): it was trained with other --lora-* settings, or without adapters.")
    return {**current, **state_dict}


# The settings that decide which tensors a checkpoint holds, and their shapes.
LAYOUT = ("lora_r", "lora_target_modules", "use_dora")


def resume_mismatch(saved: dict, lora: LoraArgs, ckpt: str) -> str | None:
    """Why a checkpoint (its saved flat config) cannot be resumed with these adapter settings (one
    sentence), or None: its adapters must be this run's."""
    before = {k: saved.get(k, 0 if k == "lora_r" else None) for k in LAYOUT}
    now = {k: getattr(lora, k) for k in LAYOUT}
    if not before["lora_r"] and not now["lora_r"]:
        return None
    if {k: before[k] or None for k in LAYOUT} == {k: now[k] or None for k in LAYOUT}:
        return None
    shown = ", ".join(f"--{k.replace('_', '-')} {before[k]}" for k in LAYOUT if before[k] != now[k])
    return (f"Checkpoint {ckpt} was trained with {shown}, and its weights are those adapters'; resume it "
            f"without changing --lora-r, --lora-target-modules or --use-dora.")


def merged(model):
    """The plain Hugging Face model with the adapters merged into its weights (peft's
    merge_and_unload): what an export writes by default."""
    plain = peft_of(model).merge_and_unload()
    plain.__dict__.pop(ATTRIBUTE, None)
    return plain


def save_adapter(model, folder: str, base_name: str) -> None:
    """The adapter folder alone (adapter_config.json, adapter_model.safetensors with the adapters
    and any modules_to_save), which peft's PeftModel.from_pretrained puts on the base model;
    `base_name` is the base model as adapter_config.json names it (not an absolute local path)."""
    peft_model = peft_of(model)
    for config in peft_model.peft_config.values():
        config.base_model_name_or_path = base_name
    peft_model.save_pretrained(folder)


def quantization_kwargs(load_in_4bit: bool) -> dict:
    """from_pretrained's arguments for --load-in-4bit (QLoRA: the frozen base in 4-bit NF4, computing
    in bfloat16, on this process's GPU), else none. flag_checks.py refuses the flag without
    bitsandbytes and CUDA, before anything is loaded."""
    if not load_in_4bit:
        return {}
    from transformers import BitsAndBytesConfig
    return {"quantization_config": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                      bnb_4bit_compute_dtype=torch.bfloat16,
                                                      bnb_4bit_use_double_quant=True),
            "device_map": {"": torch.cuda.current_device()}}


def qlora_unavailable() -> str | None:
    """Why --load-in-4bit cannot run here (one sentence), or None."""
    import importlib.util
    if importlib.util.find_spec("bitsandbytes") is None or not torch.cuda.is_available():
        return ("--load-in-4bit (QLoRA) needs bitsandbytes on a CUDA GPU (pip install bitsandbytes, and "
                "--use-gpu); this machine has " + ("no CUDA GPU." if not torch.cuda.is_available() else
                                                  "no bitsandbytes."))
    return None


def settings_of(flat: dict) -> LoraArgs | None:
    """A saved (flat) config's adapter settings, or None for a run without adapters (or one saved
    before the flags existed)."""
    import dataclasses
    if not flat.get("lora_r"):
        return None
    return LoraArgs(**{f.name: flat[f.name] for f in dataclasses.fields(LoraArgs)})
