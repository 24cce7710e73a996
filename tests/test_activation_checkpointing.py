"""--activation-checkpointing recomputes activations in backward: the loss and every gradient
are those of a run without it (SFT on the bundled model and data, packed; and DPO)."""
import pytest
import torch

import flags
import train
from collate_functions import PreferenceCollator, SFTCollator


@pytest.mark.parametrize("training_type", ["sft", "dpo"])
def test_same_loss_and_gradients(tokenizer, training_type):
    from module import PostTrainingModule
    argv = ["--training-type", training_type, "--train-dataset-length", "60", "--batch-size", "6"]
    config = flags.resolve(flags.parse_config(argv)[0])
    loaders, _, _, _ = train.build_data(config, tokenizer)
    rows = list(loaders["train"].dataset)
    if training_type == "sft":       # the longest and the five shortest: two of these fit in one packed row
        rows = sorted(rows, key=lambda r: len(r["input_ids"]))
        rows = rows[-1:] + rows[:5]
    rows = rows[:6]
    collator = SFTCollator(tokenizer.pad_token_id, 6, pack_capacity=1024) if training_type == "sft" else \
        PreferenceCollator(tokenizer.pad_token_id, 6)
    step = collator(rows)
    assert training_type != "sft" or step.micro_batches[0].position_ids is not None
    if training_type == "dpo":
        for mb in step.micro_batches:
            mb.ref_logps = torch.zeros(mb.input_ids.shape[0])

    def loss_and_grads(checkpointing):
        torch.manual_seed(0)
        module = PostTrainingModule(config.replace(activation_checkpointing=checkpointing), tokenizer=tokenizer)
        module.train()
        assert module.model.is_activation_checkpointing == checkpointing
        loss = module.compute(step.micro_batches[0], step.count)[0]
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in module.named_parameters()}

    plain_loss, plain = loss_and_grads(False)
    ckpt_loss, ckpt = loss_and_grads(True)
    torch.testing.assert_close(ckpt_loss, plain_loss, rtol=0, atol=1e-6)
    for name, grad in plain.items():
        torch.testing.assert_close(ckpt[name], grad, rtol=1e-5, atol=1e-6, msg=name)
