"""Loss registry: training type -> pure loss function.

Each loss lives in its own file with its paper's equation in the docstring. The module
looks the function up here; adding a training type adds one entry, not a branch.
Training types listed in NOT_YET are accepted by the command line's choices but fail at
start-up with a sentence saying which piece of work brings them.
"""
from losses.bt import bt_loss
from losses.dpo import dpo_loss
from losses.sft import sft_loss

LOSSES = {
    "sft": sft_loss,
    "dpo": dpo_loss,
    "bt": bt_loss,
}

NOT_YET = {
    "sft_verifier": "the GenRM-CoT extension",
}
