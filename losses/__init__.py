"""Loss registry: training type -> pure loss function.

Each loss lives in its own file with its paper's equation in the docstring. The module
looks the function up here; adding a training type adds one entry, not a branch.
"""
from losses.bt import bt_loss
from losses.dpo import dpo_loss
from losses.grpo import grpo_loss
from losses.sft import sft_loss
from losses.sft_verifier import sft_verifier_loss

LOSSES = {
    "sft": sft_loss,
    "dpo": dpo_loss,
    "bt": bt_loss,
    "sft_verifier": sft_verifier_loss,
    "grpo": grpo_loss,
}
