"""Every module imports, and every script opens with a docstring saying how to run it."""
import importlib

import pytest

MODULES = ["train", "module", "adapters", "models", "custom_dataset", "collate_functions", "generation", "losses", "losses.sft",
           "losses.dpo", "losses.preference", "losses.bt", "losses.sft_verifier", "flags", "storage", "distributed", "upload_to_hub", "reward_model", "judges",
           "win_rate", "embedded.task", "embedded.build", "extension.data_preparation", "extension.critiques", "extension.verifier", "extension.verify",
           "infer", "evaluate", "plots", "rewards", "losses.grpo", "losses.length_penalty", "experiments.replicate",
           "experiments.probe_base", "errors", "checkpoints", "logs", "model_card", "config", "flag_checks",
           "shared_flags", "text_metrics", "rollouts", "val_generation", "train_state", "losses.labels",
           "reference_logps", "packaged_models", "chat_templates", "tokenization", "data_files", "win_stats",
           "experiments.stages", "experiments.real_prefs"]


@pytest.mark.parametrize("name", MODULES)
def test_module_imports_and_has_docstring(name):
    module = importlib.import_module(name)
    assert module.__doc__ and len(module.__doc__.strip()) > 40
