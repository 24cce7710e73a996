"""Train or evaluate a language model: SFT, DPO, ORPO, KTO, Bradley-Terry reward models, GenRM-CoT verifiers, GRPO.

    python train.py                                  # SFT of the bundled tiny model on the bundled data
    python train.py --training-type sft --model-name Qwen/Qwen2.5-0.5B \\
        --dataset-name HuggingFaceTB/smol-smoltalk --lr 2e-5 --max-length 2048
    python train.py --config my_run.yaml --lr 1e-4   # YAML supplies defaults, the command line wins
    python train.py --training-type bt --name rm            # reward model on the bundled preference pairs
    python train.py --training-type dpo --model-name runs/sft --calculate-win-rate --judge correctness
    python train.py --training-type orpo --name orpo       # ORPO on the bundled pairs (no reference model)
    python train.py --training-type kto --name kto         # KTO on the same pairs, unpaired
    python train.py --training-type sft_verifier --model-name runs/dpo --lambda 0.1
    python train.py --mode test --resume-from-checkpoint runs/NAME/checkpoints/last.ckpt

Everything a run writes lands in <--storage-path>/<--name>/: checkpoints/ (Lightning .ckpt
files with the resolved config inside), tensorboard/ (event files), config.yaml, and with
--calculate-win-rate win_rate/ (per-prompt replies, scores and outcomes of every
evaluation, as JSONL). --model-name takes a Hub name, a model folder or a train.py run.
Flags (flags.py) keep the names of the original project's train.py; booleans are --x / --no-x.
A flag or value whose feature has not landed yet fails with a sentence saying so.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import sys

import storage
from callbacks import (FAULT_ENV, CheckpointSchedule, data_position, fault_injection, step_checkpoint,
                       storage_retries, tensorboard_logger)
from checkpoints import has_checkpoints
from config import Config
from errors import EXIT_USER_ERROR, ConfigError, UserError
from flag_checks import validate
from flags import parse_config, resolve, run_dir
from logs import configure_logging

log = logging.getLogger("train")


def build_data(c: Config, tokenizer):
    """CustomDataset -> tokenized rows -> DataLoaders, logging what every filter kept.
    Returns the loaders, the first test rows as (prompt messages, reference reply) pairs for
    generations (edit distance, win rate), the counts logged at step 0, and for sft_verifier
    the (verification prompt, "Yes"/"No") pairs of the first --verifier-eval-rows verify rows."""
    import torch
    from collate_functions import (KTOCollator, PreferenceCollator, PromptCollator, ResumableLoader, ResumableSampler,
                                   SFTCollator)
    from custom_dataset import CustomDataset, DataError, prompt_and_reference
    from data_files import PREFERENCE_TYPES
    from judges import final_answer
    from reward_model import trim_pairs_to_reply_end
    from tokenization import tokenize_kto_rows, tokenize_preference_rows, tokenize_prompt_rows, tokenize_sft_rows

    common = dict(source=c.data.dataset_source, random_sample=c.data.dataset_random_sample, seed=c.run.seed,
                  skip_bad_rows=c.data.skip_bad_rows)
    train = CustomDataset(c.data.dataset_name, "train", c.run.training_type, percentile=c.data.train_percentile,
                          length=c.data.train_dataset_length, **common) if c.run.mode == "train" else None
    if c.data.sanity_train and train is not None:
        test = train
    else:
        test = CustomDataset(c.data.dataset_name, "test", c.run.training_type, percentile=c.data.test_percentile,
                             length=c.data.test_dataset_length, **common)
    pairs, kto = c.run.training_type in PREFERENCE_TYPES, c.run.training_type == "kto"
    collator = PreferenceCollator if pairs else PromptCollator if c.run.training_type == "grpo" else SFTCollator
    if kto:     # it joins prompts with other rows' completions, cut as rows are
        collator = functools.partial(KTOCollator, max_length=c.data.max_length, truncation=c.data.truncation)
    counts = {}
    loaders = {}
    # FP8 GEMMs need dimensions divisible by 16 (the seed's finding on H100): pad sequences to it.
    multiple = 16 if c.model.precision == "transformer-engine" else 1
    # Packing keeps the examples of every micro-batch (so the loss is unchanged), not its layout.
    pack = {"pack_capacity": c.data.max_length} if c.data.packing else {}
    for split, ds in (("train", train), ("test", test)):
        if ds is None:
            continue
        if pairs:
            rows, dropped = tokenize_preference_rows(ds, tokenizer, c.data.max_length, c.data.truncation)
            if c.run.training_type == "bt":
                rows = trim_pairs_to_reply_end(rows, tokenizer, c.data.max_length, c.data.truncation)
        elif kto:
            rows, dropped = tokenize_kto_rows(ds, tokenizer, c.data.max_length, c.data.truncation)
        elif c.run.training_type == "grpo":
            rows, dropped = tokenize_prompt_rows(ds, tokenizer, c.data.max_length, c.data.truncation)
        else:
            rows, truncated = tokenize_sft_rows(ds, tokenizer, c.data.max_length, c.data.truncation)
            dropped = {"truncated": truncated}
        if not rows:
            raise DataError(f"Data set {ds.name} ({split}): no usable row is left after truncation to "
                            f"--max-length {c.data.max_length} (and dropping identical pairs).")
        if c.run.training_type == "grpo" and "correctness" in c.grpo.reward_funcs.split(","):
            missing = next((r for r in rows if not final_answer(r["reference"])), None)
            if missing is not None:
                raise DataError(f"Data set {ds.name} ({split}), row {missing['row']}: the correctness reward needs a "
                                f"reference reply with a final answer (\"The answer is N\" or \\boxed{{N}}), and this "
                                f"row has {'none' if missing['reference'] is None else 'no final answer in it'}.")
        log.info("%s; dropped: %s", ds.describe(), ", ".join(f"{n} {k}" for k, n in dropped.items()))
        if dropped.get("truncated") and c.data.truncation == "keep_start":
            log.warning("%d %s rows were dropped because --max-length %d cut their reply away; --truncation "
                        "keep_end keeps them (it drops the oldest prompt tokens instead).",
                        dropped["truncated"], split, c.data.max_length)
        counts[f"data/{split}_rows"] = len(rows)
        counts[f"data/{split}_skipped_bad_rows"] = ds.stats.skipped_bad_rows
        for reason, n in dropped.items():
            counts[f"data/{split}_dropped_{reason}"] = n
        if split == "train":
            # One item = one optimizer step. The order is a function of (seed, epoch), and the
            # loader's position in the epoch travels with every checkpoint (exact resume).
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
            sampler = ResumableSampler(rows, c.optim.batch_size * c.optim.accumulate_grad_batches, c.run.seed,
                                       num_replicas=torch.distributed.get_world_size() if distributed else 1,
                                       rank=torch.distributed.get_rank() if distributed else 0)
            loaders[split] = ResumableLoader(rows, sampler, collator(tokenizer.pad_token_id, c.optim.batch_size, multiple, **pack))
        else:
            loaders[split] = torch.utils.data.DataLoader(
                rows, batch_size=c.optim.batch_size, shuffle=False,
                collate_fn=collator(tokenizer.pad_token_id, pad_to_multiple_of=multiple, **pack))
    wanted = max(c.eval.val_generations, c.win_rate.win_rate_prompts if c.win_rate.calculate_win_rate else 0)
    eval_prompts = [prompt_and_reference(r) for r in list(test)[:wanted]]
    verifier_rows = []
    if c.run.training_type == "sft_verifier":
        # A verify row's target ends with its label: "... (Yes/No)? Yes", or just "No" (direct).
        verify = [prompt_and_reference(r) for r in test if r["task"] == "verify"][:c.genrm.verifier_eval_rows]
        verifier_rows = [(p[-1]["content"], ref.split()[-1]) for p, ref in verify]
    return loaders, eval_prompts, counts, verifier_rows


def build_trainer(c: Config, out: str, ray_worker: bool = False):
    """The Lightning Trainer: local (one device, ModelCheckpoint) or inside a Ray Train worker
    (Ray's strategy and environment; checkpoints reported to Ray, which keeps and restores them)."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar

    class ProgressBar(TQDMProgressBar):
        def get_metrics(self, trainer, pl_module):
            metrics = super().get_metrics(trainer, pl_module)
            metrics.pop("v_num", None)      # the logger's version is always "tensorboard"
            return metrics

    logger = tensorboard_logger(out)
    every_n_steps = c.eval.val_check_interval
    common = dict(accelerator="gpu" if c.distributed.use_gpu else "cpu", precision=c.model.precision,
                  max_epochs=c.optim.max_epochs, max_steps=c.optim.max_steps,
                  # Counted across epochs when set (Lightning needs check_val_every_n_epoch=None for that).
                  val_check_interval=every_n_steps,
                  check_val_every_n_epoch=None if every_n_steps else c.eval.check_val_every_n_epoch,
                  num_sanity_val_steps=c.eval.num_sanity_val_steps, log_every_n_steps=c.eval.log_every_n_steps,
                  logger=logger, default_root_dir=out, enable_model_summary=c.run.verbose)
    # Before every checkpoint writer (Lightning runs ModelCheckpoint's hooks last, and Ray's
    # report callback is put last below), so a checkpoint written after batch k records k batches.
    extra = [data_position(), storage_retries()]
    if os.environ.get(FAULT_ENV):
        extra.append(fault_injection(os.environ[FAULT_ENV]))
    if c.eval.early_stopping_patience:
        from lightning.pytorch.callbacks import EarlyStopping
        # check_finite: a NaN metric stops the run rather than being "no improvement".
        extra.append(EarlyStopping(monitor=c.eval.monitor, mode=c.eval.monitor_mode, patience=c.eval.early_stopping_patience,
                                   check_on_train_epoch_end=False, strict=True, check_finite=True, verbose=False))
    if ray_worker:
        import distributed
        strategy, plugins, report = distributed.lightning_parts(c, CheckpointSchedule(c))
        return L.Trainer(devices="auto", strategy=strategy, plugins=plugins, enable_checkpointing=False,
                         callbacks=[ProgressBar(), *extra, report], **common)
    checkpoint = step_checkpoint(CheckpointSchedule(c), dirpath=storage.join(out, "checkpoints"),
                                 filename="epoch={epoch}-step={step}", auto_insert_metric_name=False,
                                 every_n_epochs=c.checkpoint.checkpoint_frequency, save_top_k=c.checkpoint.ckpt_to_keep,
                                 monitor="step", mode="max", save_last=True,
                                 # A resumed run re-reaching a step a killed run had saved replaces
                                 # that file (atomically) rather than adding an untracked "-v1" copy.
                                 enable_version_counter=False)
    if c.eval.save_best:
        # Written after every validation that improves --monitor; loading the run folder as a
        # model takes it (checkpoints.find_checkpoint(best=True)), resuming takes last.ckpt.
        extra.append(ModelCheckpoint(dirpath=storage.join(out, "checkpoints"), filename="best", monitor=c.eval.monitor,
                                     mode=c.eval.monitor_mode, save_top_k=1, save_on_train_epoch_end=False,
                                     enable_version_counter=False, auto_insert_metric_name=False))
    return L.Trainer(devices=1, callbacks=[checkpoint, ProgressBar(), *extra], plugins=[storage.checkpoint_io()],
                     **common)


def save_config(c: Config, out: str) -> None:
    import yaml
    storage.write_text_atomic(storage.join(out, "config.yaml"), yaml.safe_dump(c.flat(), sort_keys=True))


def run(c: Config) -> dict:
    """Train or test with a resolved config, here or on a Ray cluster; returns the final metrics."""
    out = run_dir(c)
    try:
        existing = c.run.mode == "train" and not c.checkpoint.resume_from_checkpoint and has_checkpoints(out)
    except Exception as e:  # noqa: BLE001 - credentials or network errors from a remote store
        raise ConfigError(f"Run folder {out} cannot be reached: {str(e).strip().splitlines()[0].rstrip('.')}.") from None
    if existing:
        raise ConfigError(f"Run folder {out} already holds checkpoints; continue it with "
                          f"--resume-from-checkpoint {out} or choose another --name.")
    if c.distributed.use_ray:
        import distributed
        metrics = distributed.launch(c, ray_worker)
    else:
        metrics = fit(c)
    if c.run.mode == "test":
        print(json.dumps(metrics, sort_keys=True))
    else:
        tensorboard = storage.join(out, "tensorboard")
        where = out if c.distributed.use_ray else storage.join(out, "checkpoints")
        print(f"Done: step {int(metrics.get('step', 0))}. Checkpoints in {where}, TensorBoard logs in "
              f"{tensorboard} (view: tensorboard --logdir {tensorboard}).")
        if "best_score" in metrics:
            print(f"Best {c.eval.monitor}: {metrics['best_score']:.4g}, in {storage.join(where, 'best.ckpt')} "
                  f"(loading the run folder as a model uses it).")
    return metrics


def ray_worker(flat: dict) -> None:
    """What every Ray Train worker runs (distributed.launch hands it the flat config): the same fit as a local run."""
    c = Config.from_flat(flat)
    configure_logging(c.run.verbose)
    fit(c, ray_worker=True)


def fit(c: Config, ray_worker: bool = False) -> dict:
    """Build data, module and Trainer, then train (or test); the same code in every process."""
    import lightning as L
    import torch

    import adapters
    import logprobs
    from models import load_causal_lm, load_model, load_tokenizer
    from module import PostTrainingModule

    out = run_dir(c)
    if ray_worker:      # main() did it in this process otherwise
        storage.configure_retries(c.checkpoint.s3_retries, c.checkpoint.s3_retry_delay)
    L.seed_everything(c.run.seed, workers=True, verbose=False)
    tokenizer = load_tokenizer(c.model.model_name, c.model.trust_remote_code, c.model.chat_template)
    loaders, eval_prompts, counts, verifier_rows = build_data(c, tokenizer)
    metadata = {"code_version": code_version(),
                "data_fingerprint": data_fingerprint(loaders["train"].dataset) if "train" in loaders else None}
    # A bt run from a causal LM gets a new score head: drawn here, right after seeding.
    model = load_model(c.run.training_type, c.model.model_name, tokenizer, c.model.trust_remote_code,
                       c.lora.load_in_4bit, c.bt.reward_pooling)
    if c.lora.lora_r:
        adapters.add_adapters(model, c.lora, c.run.training_type)     # logs how many parameters train
    if c.data.packing and not logprobs.supports_packing(model):
        # An encoder reward model attends both ways, across packed sequences; padded rows are exact.
        log.warning("%s does not keep attention within packed sequences: training without --packing.",
                    type(model).__name__)
        c = c.replace(packing=False)
        for loader in loaders.values():
            loader.collate_fn.pack_capacity = None
    reference = None
    # Under --lora-r the reference is the policy with its adapters disabled (module.reference): no copy loaded.
    by_adapters = c.lora.lora_r > 0
    from losses.preference import PREFERENCE_LOSSES
    if by_adapters and ((c.run.training_type == "dpo" and not PREFERENCE_LOSSES[c.dpo.dpo_loss].reference_free)
                        or (c.run.training_type == "grpo" and c.grpo.kl_coef > 0) or c.run.training_type == "kto"):
        log.info("reference log-probs: the policy with its LoRA adapters disabled (peft's disable_adapter); "
                 "no reference copy is loaded")
    if c.run.training_type == "dpo":
        if PREFERENCE_LOSSES[c.dpo.dpo_loss].reference_free:
            log.info("--dpo-loss %s is reference-free: no reference model is loaded and no reference log-probs "
                     "are computed", c.dpo.dpo_loss)
        elif c.dpo.precompute_ref_log_probs:
            # The policy was just loaded from the starting checkpoint (a resumed run loads its
            # trained weights later, inside fit), so here it is the reference.
            import contextlib

            from reference_logps import precompute_reference_logps
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
            with adapters.reference_mode(model) if by_adapters else contextlib.nullcontext(model) as ref:
                precompute_reference_logps(ref, loaders, c.optim.batch_size, tokenizer.pad_token_id,
                                           c.data.max_length if c.data.packing else None, run=c,
                                           saved=storage.join(out, "reference_logps"),
                                           rank=torch.distributed.get_rank() if distributed else 0)
        elif not by_adapters:
            reference = load_causal_lm(c.model.model_name, c.model.trust_remote_code)
    if c.run.training_type == "orpo":
        log.info("--training-type orpo is reference-free: no reference model is loaded and no reference log-probs "
                 "are computed")
    if c.run.training_type == "kto" and not by_adapters:
        # Scored live: kto's mismatched pairs are formed in each batch, so they cannot be precomputed per row.
        reference = load_causal_lm(c.model.model_name, c.model.trust_remote_code)
    rewards = None
    if c.run.training_type == "grpo":
        from rewards import Rewards
        rewards = Rewards.from_config(c)
        if c.grpo.kl_coef > 0 and not by_adapters:        # the KL's frozen reference: the starting model
            reference = load_causal_lm(c.model.model_name, c.model.trust_remote_code)
    # Edit distance needs a reference reply (a grpo prompt may come without one).
    val_prompts = [] if c.run.training_type == "bt" else \
        [(p, r) for p, r in eval_prompts[:c.eval.val_generations] if r is not None]
    module = PostTrainingModule(c, model=model, tokenizer=tokenizer, val_prompts=val_prompts, reference=reference,
                                win_rate=win_rate_setup(c, eval_prompts[:c.win_rate.win_rate_prompts]),
                                verifier_rows=verifier_rows, rewards=rewards, metadata=metadata)
    if c.model.precision == "bf16-true" and c.run.mode == "train":
        from precision import check_bf16_true
        check_bf16_true(module.model, c.optim.lr)       # before Lightning casts the weights
    trainer = build_trainer(c, out, ray_worker)
    ckpt_path = c.checkpoint.resume_from_checkpoint
    if ray_worker:
        import distributed
        trainer, ckpt_path = distributed.prepare(trainer, ckpt_path)
    if ckpt_path and c.run.mode == "train":
        check_resume(ckpt_path, metadata, c.checkpoint.force_resume, c)     # before anything in the run folder changes
    if c.run.mode == "test":
        trainer.test(module, dataloaders=loaders["test"], ckpt_path=ckpt_path, verbose=False)
        return {k: round(v, c.run.roundoff) if c.run.roundoff is not None else v
                for k, v in module.test_metrics.items()}
    if trainer.is_global_zero:
        save_config(c, out)
        for name, value in counts.items():
            trainer.logger.experiment.add_scalar(name, value, 0)
    if not ckpt_path and c.eval.validate_before_training:
        # Validation metrics of the starting model, logged at step 0: the curve's baseline.
        trainer.validate(module, dataloaders=loaders["test"], verbose=False)
    trainer.fit(module, train_dataloaders=loaders["train"], val_dataloaders=loaders["test"], ckpt_path=ckpt_path)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    metrics["step"] = trainer.global_step
    best = [cb for cb in trainer.checkpoint_callbacks if c.eval.save_best and cb.monitor == c.eval.monitor]
    if best and best[0].best_model_score is not None:
        metrics["best_score"] = float(best[0].best_model_score)
    return metrics


def code_version() -> str:
    """The git commit of this checkout, or "unknown" (no git, or not a checkout: a Ray job's working dir)."""
    import subprocess
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=os.path.dirname(os.path.abspath(__file__)),
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def data_fingerprint(rows: list[dict]) -> str:
    """SHA-256 of the training rows as trained on (after filtering and tokenization), in their order."""
    import hashlib
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, default=str).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def check_resume(ckpt: str, metadata: dict, force: bool, c: Config) -> None:
    """Refuse to continue a checkpoint on training data other than its own (its data order and
    position would mean nothing), unless --force-resume, or with other adapters (--lora-r, ...)
    than its own; checkpoints written before the metadata existed are resumed as they are."""
    import adapters
    checkpoint = storage.load_torch(ckpt)       # local: memory-mapped, the weights unread
    mismatch = adapters.resume_mismatch(checkpoint.get("hyper_parameters", {}), c.lora, ckpt)
    if mismatch:
        raise ConfigError(mismatch)
    saved = checkpoint.get("run_metadata", {})
    before, now = saved.get("data_fingerprint"), metadata["data_fingerprint"]
    if before and before != now:
        if not force:
            raise ConfigError(f"Checkpoint {ckpt} was trained on different data (fingerprint {before[:12]}, now "
                              f"{now[:12]}: another data set, filter or tokenization); resume anyway with --force-resume.")
        log.warning("resuming %s on different training data (fingerprint %s, now %s): --force-resume",
                    ckpt, before[:12], now[:12])
    if saved.get("code_version", metadata["code_version"]) != metadata["code_version"]:
        log.info("checkpoint %s was written by code version %s; this is %s", ckpt, saved["code_version"],
                 metadata["code_version"])


def win_rate_setup(c: Config, prompts: list[tuple[list[dict], str]]):
    """--calculate-win-rate: the judge, the model to beat and the generation settings."""
    if not c.win_rate.calculate_win_rate:
        return None
    from judges import make_judge
    from val_generation import WinRateSetup
    judge = make_judge(c.win_rate.judge, base_url=c.win_rate.judge_base_url, api_key_env=c.win_rate.judge_api_key_env,
                       max_length=c.data.max_length)
    generation = dict(max_new_tokens=c.eval.val_max_new_tokens, temperature=c.win_rate.win_rate_temperature,
                      top_p=c.win_rate.win_rate_top_p, seed=c.run.seed, batch_size=c.optim.batch_size)
    return WinRateSetup([p for p, _ in prompts], [r for _, r in prompts], c.win_rate.reference_model or c.model.model_name,
                        judge, generation, storage.join(run_dir(c), "win_rate"))


def main(argv: list[str] | None = None) -> int:
    try:
        config, given = parse_config(argv)
        configure_logging(config["verbose"])
        validate(config, given)
        storage.configure_retries(config["s3_retries"], config["s3_retry_delay"])
        run(resolve(config))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
