"""The resolved configuration of a run as frozen, typed groups, one per concern.

    config = Config.from_flat(flags.resolve(flags_dict))   # what train.py builds from the flags
    config.optim.lr, config.dpo.beta, config.grpo.kl_coef   # a typo is an AttributeError at once
    config.flat()                                          # {"lr": ..., ...}: config.yaml and checkpoints
    config.replace(packing=False)                          # a new Config with one field changed

Every field is a train.py flag of the same name (its default and help text are in flags.py,
declared once there); this module says only which group a flag belongs to and its type.
flags.py validates flags by name, before this is built; everything after reads the groups.
Configs are saved flat (config.yaml, a checkpoint's hyper-parameters), the form every
earlier checkpoint holds, so a saved config of any version loads through `from_flat`.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class RunArgs:
    """What to run and where its folder is."""
    training_type: str          # sft, dpo, bt, sft_verifier, grpo, orpo or kto
    mode: str                   # train, or test a checkpoint
    storage_path: str           # the parent of run folders (local or a URL)
    name: str                   # the run folder's name
    seed: int                   # weights init, data order and sampling
    verbose: bool
    roundoff: int | None        # digits of logged metric values (None: all)


@dataclass(frozen=True)
class ModelArgs:
    """The starting model and how it computes."""
    model_name: str             # Hub name, folder, .gguf, train.py run or packaged short name
    trust_remote_code: bool
    chat_template: str | None   # a built-in name or the template's text (chat_templates.stored)
    precision: str              # Lightning precision
    compile: bool               # torch.compile the training forward
    activation_checkpointing: bool
    disable_dropout: bool       # every dropout probability set to 0 (flags.NO_DROPOUT_TYPES by default)


@dataclass(frozen=True)
class LoraArgs:
    """LoRA / DoRA adapters (adapters.py): off while lora_r is 0."""
    lora_r: int                 # the adapters' rank; 0: no adapters, every weight trains
    lora_alpha: float           # the update is scaled by lora_alpha / lora_r
    lora_dropout: float         # dropout on the adapters' input
    lora_target_modules: str | None  # comma-separated module names or all-linear (None: adapters.DEFAULT_TARGETS)
    use_dora: bool              # weight-decomposed adapters (DoRA)
    load_in_4bit: bool          # QLoRA: the frozen base in 4-bit NF4 (bitsandbytes, CUDA)


@dataclass(frozen=True)
class DataArgs:
    """The data set, its filters and how rows become batches."""
    dataset_name: str
    train_dataset_length: int | None
    test_dataset_length: int | None
    dataset_random_sample: bool
    dataset_source: str | None
    train_percentile: float | None
    test_percentile: float | None
    skip_bad_rows: bool
    sanity_train: bool          # validate on the training split
    max_length: int             # tokens per conversation after truncation
    truncation: str             # keep_start | keep_end (tokenization.py)
    packing: bool               # pack a micro-batch's sequences into fewer rows


@dataclass(frozen=True)
class OptimArgs:
    """The optimizer, its schedule and the length of training."""
    max_epochs: int
    max_steps: int              # -1: no limit
    batch_size: int             # rows per micro-batch, per worker
    accumulate_grad_batches: int
    lr: float
    warmup_ratio: float
    weight_decay: float
    gradient_clip_val: float
    max_nonfinite_steps: int    # skipped non-finite steps in a row before the run stops


@dataclass(frozen=True)
class SamplingArgs:
    """The policy's samples while training: grpo rollouts and --length-penalty replies."""
    temperature: float
    top_p: float
    max_new_tokens: int


@dataclass(frozen=True)
class EvalArgs:
    """Validation: when it runs, the greedy replies it scores, and what it monitors."""
    check_val_every_n_epoch: int
    val_check_interval: int | None
    num_sanity_val_steps: int
    validate_before_training: bool
    val_generations: int
    val_max_new_tokens: int
    monitor: str | None
    monitor_mode: str | None
    early_stopping_patience: int | None
    save_best: bool
    log_every_n_steps: int


@dataclass(frozen=True)
class WinRateArgs:
    """--calculate-win-rate during validation, and the judge (also an openai: reward model's endpoint)."""
    calculate_win_rate: bool
    judge: str | None
    judge_base_url: str
    judge_api_key_env: str
    reference_model: str | None
    win_rate_prompts: int
    win_rate_temperature: float
    win_rate_top_p: float


@dataclass(frozen=True)
class CheckpointArgs:
    """Checkpoints, resuming, and the retries of a remote run folder."""
    checkpoint_frequency: int
    checkpoint_every_n_steps: int | None
    ckpt_to_keep: int
    resume_from_checkpoint: str | None
    force_resume: bool
    s3_retries: int
    s3_retry_delay: float


@dataclass(frozen=True)
class DistributedArgs:
    """Devices, and Ray Train workers."""
    use_gpu: bool
    use_ray: bool
    num_workers: int
    strategy: str
    state_dict_type: str
    accelerator_type: str | None
    placement_strategy: str
    max_failures: int


@dataclass(frozen=True)
class SFTArgs:
    """sft: the dynamic length penalty (seed 003)."""
    length_penalty: float
    length_penalty_every: int


@dataclass(frozen=True)
class DPOArgs:
    """dpo: the preference loss (losses/preference.py), its beta and own terms, and the reference log-probs."""
    dpo_loss: str               # sigmoid, ipo, cdpo, hinge or simpo (flags.DPO_LOSSES)
    beta: float                 # every --dpo-loss's beta (ipo's tau), and kto's
    rpo_alpha: float            # sigmoid only: the RPO NLL term's weight
    label_smoothing: float      # cdpo only: the probability e that a label is flipped
    simpo_gamma: float          # simpo only: the target reward margin
    precompute_ref_log_probs: bool


@dataclass(frozen=True)
class ORPOArgs:
    """orpo (losses/orpo.py): the odds-ratio term's weight."""
    orpo_lambda: float


@dataclass(frozen=True)
class KTOArgs:
    """kto (losses/kto.py): the weights of the desirable and undesirable rows' losses (beta is config.dpo.beta)."""
    kto_desirable_weight: float
    kto_undesirable_weight: float


@dataclass(frozen=True)
class BTArgs:
    """bt: the reward-centering term, and an encoder's pooling (reward_model.sequence_rewards)."""
    center_rewards_coefficient: float
    reward_pooling: str


@dataclass(frozen=True)
class GRPOArgs:
    """grpo: groups, advantages, the clipped objective, the KL and the rewards."""
    num_generations: int
    advantage: str
    loss_aggregation: str
    num_iterations: int
    clip_range: float
    kl_coef: float
    reward_funcs: str | None
    reward_weights: str | None
    reward_model: str | None
    reward_model_weight: float


@dataclass(frozen=True)
class GenRMArgs:
    """sft_verifier (GenRM-CoT): the generation term's weight and validation's verifier scores."""
    lambda_: float
    verifier_eval_rows: int
    verifier_k: int


@dataclass(frozen=True)
class Config:
    run: RunArgs
    model: ModelArgs
    lora: LoraArgs
    data: DataArgs
    optim: OptimArgs
    sampling: SamplingArgs
    eval: EvalArgs
    win_rate: WinRateArgs
    checkpoint: CheckpointArgs
    distributed: DistributedArgs
    sft: SFTArgs
    dpo: DPOArgs
    orpo: ORPOArgs
    kto: KTOArgs
    bt: BTArgs
    grpo: GRPOArgs
    genrm: GenRMArgs

    @classmethod
    def from_flat(cls, flat: dict) -> Config:
        """Group a resolved flag dict; a key that is no field (a flag an older version had) is
        ignored, a field without a key is a KeyError naming it (flags.py fills every flag)."""
        missing = [n for n in GROUP_OF if n not in flat]
        if missing:
            raise KeyError(f"config has no value for {', '.join(missing)}")
        return cls(**{name: group(**{f.name: flat[f.name] for f in fields(group)}) for name, group in GROUPS.items()})

    def flat(self) -> dict:
        """{flag dest: value} of every field: the form saved in config.yaml and checkpoints."""
        return {k: v for group in fields(self) for k, v in dataclasses.asdict(getattr(self, group.name)).items()}

    def replace(self, **changes) -> Config:
        """A copy with the given fields (flag dests) changed, each in its group."""
        unknown = set(changes) - set(GROUP_OF)
        if unknown:
            raise AttributeError(f"no config field {', '.join(sorted(unknown))}")
        groups = {}
        for name, value in changes.items():
            groups.setdefault(GROUP_OF[name], {})[name] = value
        return dataclasses.replace(self, **{g: dataclasses.replace(getattr(self, g), **kw)
                                            for g, kw in groups.items()})


# Each group's class, by its name in Config (from the annotations, which are strings here).
GROUPS = {name: cls for name, cls in typing.get_type_hints(Config).items()}
# Each field's group, by flag dest: a field name is unique across groups (tests/test_config.py).
GROUP_OF = {f.name: group for group, cls in GROUPS.items() for f in fields(cls)}
