"""DPO's precomputed reference log-probs are paid only for what a run reaches: the training rows
within --max-steps, the test rows of the sanity check (all, where a validation pass is reached);
they are saved in the run folder and read back on resume; a row that was not scored gets the
same value from a live reference."""
import json
import math

import torch

import flags
import train
from collate_functions import PreferenceCollator, ResumableSampler
from reference_logps import reached_indices, validation_reached


def test_reached_indices_are_the_sampler_order_up_to_max_steps():
    """20 rows, 4 rows a step (5 steps an epoch). 3 steps reach the first 12 rows of epoch 0's
    order; 7 steps all of epoch 0 and the first 8 of epoch 1 (all 20 once both are merged)."""
    rows = list(range(20))
    sampler = ResumableSampler(rows, 4, seed=3)
    epoch0 = list(torch.utils.data.DistributedSampler(rows, num_replicas=1, rank=0, shuffle=True, seed=3))
    assert reached_indices(sampler, 3, 1) == sorted(epoch0[:12])
    assert reached_indices(sampler, -1, 1) == list(range(20))
    assert len(reached_indices(sampler, 7, 2)) == 20
    # Worker 1 of 2 reaches only its own shard: every second row of the order.
    shard = ResumableSampler(rows, 2, seed=3, num_replicas=2, rank=1)
    assert reached_indices(shard, 2, 1) == sorted(epoch0[1::2][:4])


def test_validation_reached_by_epoch_end_or_interval():
    sampler = ResumableSampler(list(range(20)), 4, seed=0)        # 5 steps an epoch
    run = flags.resolve(flags.parse_config(["--max-epochs", "1", "--max-steps", "4"])[0])
    assert not validation_reached(sampler, run)
    assert validation_reached(sampler, run.replace(max_steps=5))
    assert validation_reached(sampler, run.replace(val_check_interval=2))
    assert validation_reached(sampler, run.replace(validate_before_training=True))


def test_a_run_scores_what_it_reaches_and_a_resume_reads_it_back(tmp_path, caplog):
    common = ["--training-type", "dpo", "--storage-path", str(tmp_path), "--train-dataset-length", "64",
              "--test-dataset-length", "16", "--batch-size", "4", "--val-generations", "0", "--lr", "1e-4"]
    assert train.main([*common, "--name", "dpo", "--max-steps", "2"]) == 0
    saved = tmp_path / "dpo" / "reference_logps" / "rank-0.json"
    first = json.loads(saved.read_text())["values"]
    # 2 steps x 4 pairs, and the sanity check's 2 batches of 4 test pairs (no validation pass is reached).
    assert len(first["train"]) == 8 and sorted(map(int, first["test"])) == list(range(8))
    caplog.clear()
    assert train.main(["--resume-from-checkpoint", str(tmp_path / "dpo"), "--max-steps", "4"]) == 0
    assert any("16 read from" in r.getMessage() for r in caplog.records)
    second = json.loads(saved.read_text())["values"]
    assert len(second["train"]) == 16 and all(second["train"][k] == v for k, v in first["train"].items())


def test_a_row_without_a_precomputed_value_gets_it_from_a_live_reference(tokenizer):
    """The module loads the starting model as the reference: the same loss as the cached values, to 1e-5."""
    from module import PostTrainingModule
    from reference_logps import precompute_reference_logps
    config, _ = flags.parse_config(["--training-type", "dpo", "--train-dataset-length", "6", "--beta", "1.0"])
    config = flags.resolve(config)
    loaders, _, _, _ = train.build_data(config, tokenizer)
    rows = list(loaders["train"].dataset)
    module = PostTrainingModule(config, tokenizer=tokenizer)
    with torch.no_grad():
        for p in module.model.parameters():        # the policy moved away from its start
            p.mul_(0.95)
        live, _ = module.compute(PreferenceCollator(tokenizer.pad_token_id)(rows))
        assert module._reference       # loaded on demand
        start = PostTrainingModule(config, tokenizer=tokenizer).model
        precompute_reference_logps(start, {"train": loaders["train"]}, 3, tokenizer.pad_token_id)
        cached, _ = module.compute(PreferenceCollator(tokenizer.pad_token_id)(rows))
    assert abs(live.item() - cached.item()) < 1e-5 and abs(live.item() - math.log(2)) > 1e-3
