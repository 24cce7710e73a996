"""The model card (README.md) of an exported Hugging Face folder: base model, training type,
data set, hyper-parameters, the run's final validation metrics and the date.

    text = model_card(config, step, final_metrics(ckpt, step), source)

models.export writes it; nothing here loads a model.
"""
from __future__ import annotations

import os
import time

import packaged_models
import storage
from checkpoints import run_of

# Hyper-parameters worth a line in the model card, in this order: those of every run, then
# those of its training type.
CARD_KEYS = ("training_type", "lr", "batch_size", "accumulate_grad_batches", "max_epochs", "max_steps",
             "max_length", "warmup_ratio", "weight_decay", "gradient_clip_val", "precision", "seed",
             "dataset_source", "train_dataset_length")
TYPE_KEYS = {"sft": ("length_penalty", "length_penalty_every"),
             "dpo": ("dpo_loss", "beta"),          # and the loss's own (losses/preference.py), in type_keys
             "bt": ("center_rewards_coefficient", "reward_pooling"), "sft_verifier": ("lambda_",), "orpo": ("orpo_lambda",),
             "kto": ("beta", "kto_desirable_weight", "kto_undesirable_weight"),
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


def shown_name(name: str) -> str:
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
    from plots import read_scalars
    run = run_of(ckpt_path)
    try:
        events = storage.join(run, "tensorboard") if run is not None else None
        if events is None or not storage.isdir(events):
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


def type_keys(config: dict) -> tuple[str, ...]:
    """The card's rows for the training type: a dpo run shows its --dpo-loss's own
    hyper-parameters (rpo_alpha for sigmoid, label_smoothing for cdpo, ...), not the others'."""
    keys = TYPE_KEYS.get(config["training_type"], ())
    if config["training_type"] == "dpo":
        from losses.preference import PREFERENCE_LOSSES
        keys += PREFERENCE_LOSSES[config.get("dpo_loss", "sigmoid")].params     # no key: saved before --dpo-loss
    return keys


def model_card(config: dict, step: int | None, metrics: dict | None = None, source: dict | None = None) -> str:
    """The README.md of an export; `source` is the base model's GGUF provenance (packaged_models.source)."""
    base, data = shown_name(config["model_name"]), shown_name(config["dataset_name"])
    keys = CARD_KEYS + type_keys(config)
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
