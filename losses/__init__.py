"""Loss registry: training type -> pure loss function.

Each loss lives in its own file with its paper's equation in the docstring. The module
looks the function up here; adding a training type adds one entry, not a branch. The
token-level losses (sft, sft_verifier) are registered in their per-token-NLL form, which
the module feeds from logprobs.token_logps (no full logits); sft_loss(logits, labels) and
sft_verifier_loss(logits, ...) remain for callers holding logits. The label conventions
(IGNORE_INDEX) are losses/labels.py's. dpo's entry dispatches on --dpo-loss to the
preference losses of losses/preference.py (sigmoid DPO, IPO, cDPO, hinge, SimPO); orpo and kto
have their own files (preference_steps.py feeds them).
"""
from losses.bt import bt_loss
from losses.grpo import grpo_loss
from losses.kto import kto_loss
from losses.orpo import orpo_loss
from losses.preference import preference_loss
from losses.sft import sft_loss_from_nll
from losses.sft_verifier import sft_verifier_loss_from_nll

LOSSES = {
    "sft": sft_loss_from_nll,
    "dpo": preference_loss,
    "bt": bt_loss,
    "sft_verifier": sft_verifier_loss_from_nll,
    "grpo": grpo_loss,
    "orpo": orpo_loss,
    "kto": kto_loss,
}
