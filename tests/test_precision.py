"""--precision: Lightning's precision strings reach the Trainer; FP8 (transformer-engine) is
refused with one sentence where it cannot run, and its padding rule is wired."""
import pytest

import flag_checks
import flags
import train
from collate_functions import SFTCollator


def trainer_for(*argv):
    config, given = flags.parse_config(list(argv))
    flag_checks.validate(config, given)
    return train.build_trainer(flags.resolve(config), "/tmp/unused-run")


@pytest.mark.parametrize("precision, plugin", [
    ("32-true", "Precision"), ("bf16-mixed", "MixedPrecision"), ("bf16-true", "HalfPrecision"),
])
def test_precision_plugin(precision, plugin):
    trainer = trainer_for("--precision", precision)
    assert type(trainer.precision_plugin).__name__ == plugin
    if precision != "32-true":
        assert trainer.precision_plugin.precision == precision


def test_transformer_engine_refused_without_the_package_or_a_hopper_gpu(capsys):
    assert train.main(["--precision", "transformer-engine"]) == 2
    err = capsys.readouterr().err
    assert "transformer-engine" in err and "requirements-gpu.txt" in err and "H100" in err
    assert len(err.strip().splitlines()) == 1


def test_fp8_padding_multiple():
    rows = [{"input_ids": [5] * 19, "labels": [5] * 19}, {"input_ids": [6] * 3, "labels": [6] * 3}]
    batch = SFTCollator(pad_id=0, micro_batch_size=2, pad_to_multiple_of=16)(rows).micro_batches[0]
    assert batch.input_ids.shape == (2, 32) and batch.attention_mask.sum().item() == 22


@pytest.fixture
def fake_transformer_engine(monkeypatch):
    """Just enough of the transformer_engine package for Lightning to build its FP8 plugin
    on a CPU machine; nothing is computed with it."""
    import sys
    import types

    import lightning.fabric.plugins.precision.transformer_engine as te_plugin
    recipe = types.ModuleType("transformer_engine.common.recipe")
    recipe.DelayedScaling = type("DelayedScaling", (), {})
    for name, module in {"transformer_engine": types.ModuleType("transformer_engine"),
                         "transformer_engine.common": types.ModuleType("transformer_engine.common"),
                         "transformer_engine.common.recipe": recipe}.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(te_plugin, "_TRANSFORMER_ENGINE_AVAILABLE", True)


def test_transformer_engine_selects_lightnings_fp8_plugin(fake_transformer_engine):
    import torch
    config, _ = flags.parse_config(["--precision", "transformer-engine"])
    trainer = train.build_trainer(flags.resolve(config), "/tmp/unused-run")
    plugin = trainer.precision_plugin
    assert type(plugin).__name__ == "TransformerEnginePrecision" and plugin.weights_dtype == torch.bfloat16


def test_transformer_engine_installed_but_no_hopper_gpu(fake_transformer_engine, capsys):
    assert train.main(["--precision", "transformer-engine"]) == 2
    assert "needs --use-gpu and an H100/H200 (Hopper) or newer GPU" in capsys.readouterr().err
