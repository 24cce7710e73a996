"""logprobs.py: the chunked LM head equals the plain logits path (values and gradients, fp32),
on the bundled tiny model (tied embeddings) and on an untied head with a bias; models whose
logits are not head(decoder(x)) fall back to the plain path; packed rows equal unpacked ones."""
import pytest
import torch
import torch.nn.functional as F

import logprobs
from collate_functions import pack_sft, pad_sft
from conftest import EMBEDDED_MODEL
from losses.dpo import sequence_logps_from_logits
from losses.sft import sft_loss


@pytest.fixture
def model():
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(str(EMBEDDED_MODEL), dtype=torch.float32)


def batch(seed=0, N=3, T=12, V=1129):
    """Right-padded rows of different lengths, labels on a random subset of real tokens."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, V, (N, T), generator=g)
    lengths = torch.tensor([T, T - 3, T - 7])[:N]
    attention_mask = (torch.arange(T)[None] < lengths[:, None]).long()
    labels = input_ids.masked_fill(torch.rand(N, T, generator=g) < 0.4, -100).masked_fill(attention_mask == 0, -100)
    return input_ids, attention_mask, labels


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_function_matches_log_softmax_with_bias_and_several_chunks():
    """hidden (7, 5), weight (11, 5), bias (11,), chunks of 3 rows: values and all three gradients."""
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(7, 5, generator=g, requires_grad=True)
    weight = torch.randn(11, 5, generator=g, requires_grad=True)
    bias = torch.randn(11, generator=g, requires_grad=True)
    labels = torch.randint(0, 11, (7,), generator=g)
    upstream = torch.randn(7, generator=g)

    out = logprobs.ChunkedLabelLogps.apply(hidden, weight, bias, labels, 3)
    (out * upstream).sum().backward()
    chunked = [t.grad.clone() for t in (hidden, weight, bias)]
    for t in (hidden, weight, bias):
        t.grad = None
    expected = F.log_softmax(hidden @ weight.T + bias, dim=-1).gather(1, labels[:, None]).squeeze(1)
    (expected * upstream).sum().backward()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for got, want in zip(chunked, (hidden.grad, weight.grad, bias.grad)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_token_logps_and_gradients_equal_the_full_logits_path(model, monkeypatch):
    assert logprobs.uses_chunked_head(model) and model.config.tie_word_embeddings
    monkeypatch.setattr(logprobs, "CHUNK_ELEMENTS", 5 * model.config.vocab_size)   # 5 rows a chunk
    input_ids, attention_mask, labels = batch()

    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    full = sft_loss(logits, labels)
    full.loss.backward()
    want = grads(model)
    want_seq = sequence_logps_from_logits(logits.detach(), labels)
    model.zero_grad()

    token = logprobs.token_logps(model, input_ids, attention_mask, labels)          # (3, 11)
    assert token.shape == (3, 11) and token.dtype == torch.float32
    assert (token[labels[:, 1:] == -100] == 0).all()
    mask = labels[:, 1:] != -100
    loss = -token.sum() / mask.sum()
    loss.backward()
    torch.testing.assert_close(loss, full.loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(token.sum(-1), want_seq, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logprobs.sequence_logps(model, input_ids, attention_mask, labels).detach(), want_seq,
                               rtol=1e-5, atol=1e-5)
    got = grads(model)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-5, msg=name)


def test_untied_head_with_bias(model):
    """A separate LM head with a bias (not Qwen2's layout) still goes the chunked way, exactly."""
    from transformers import AutoModelForCausalLM
    config = model.config
    config.tie_word_embeddings = False
    torch.manual_seed(1)
    untied = AutoModelForCausalLM.from_config(config)
    untied.lm_head.bias = torch.nn.Parameter(torch.randn(config.vocab_size) * 0.1)
    assert logprobs.uses_chunked_head(untied)
    input_ids, attention_mask, labels = batch(seed=2)
    want = sequence_logps_from_logits(untied(input_ids=input_ids, attention_mask=attention_mask).logits, labels)
    want.sum().backward()
    want_grads = grads(untied)
    untied.zero_grad()
    got = logprobs.sequence_logps(untied, input_ids, attention_mask, labels)
    got.sum().backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for name, g in grads(untied).items():
        torch.testing.assert_close(g, want_grads[name], rtol=1e-5, atol=1e-5, msg=name)


class ScaledLogits(torch.nn.Module):
    """A causal LM whose logits are head(decoder(x)) / 2 (as logit-scaling models do)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def get_decoder(self):
        return self.inner.get_decoder()

    def forward(self, **kwargs):
        out = self.inner(**kwargs)
        out.logits = out.logits / 2
        return out


def test_models_whose_logits_are_not_the_head_output_take_the_plain_path(model):
    scaled = ScaledLogits(model)
    assert not logprobs.uses_chunked_head(scaled)
    input_ids, attention_mask, labels = batch(seed=3)
    want = sequence_logps_from_logits(model(input_ids=input_ids, attention_mask=attention_mask).logits / 2, labels)
    torch.testing.assert_close(logprobs.sequence_logps(scaled, input_ids, attention_mask, labels), want)


def test_packed_rows_equal_unpacked_rows_values_and_gradients(model):
    """Five conversations packed into rows of at most 20 tokens (position_ids restarting, no
    attention mask) give the unpacked loss and gradients: attention stays within each one."""
    g = torch.Generator().manual_seed(4)
    examples = []
    for n in (9, 20, 5, 7, 11):
        ids = torch.randint(3, 1129, (n,), generator=g).tolist()
        labels = [-100 if torch.rand(1, generator=g).item() < 0.3 else t for t in ids]
        examples.append({"input_ids": ids, "labels": labels})
    plain = pad_sft(examples, pad_id=0)
    packed = pack_sft(examples, pad_id=0, capacity=20)
    assert packed.input_ids.shape[0] == 3 and packed.input_ids.shape[1] == 20      # 20, 11+9, 7+5
    assert packed.num_tokens == plain.num_tokens

    want = -logprobs.token_logps(model, plain.input_ids, plain.attention_mask, plain.labels).sum() / plain.num_tokens
    want.backward()
    want_grads = grads(model)
    model.zero_grad()
    got = -logprobs.token_logps(model, packed.input_ids, None, packed.labels,
                                packed.position_ids).sum() / packed.num_tokens
    got.backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for name, value in grads(model).items():
        torch.testing.assert_close(value, want_grads[name], rtol=1e-5, atol=1e-5, msg=name)


def test_last_logits_with_a_shared_prefix_equal_each_row_run_alone(model):
    """Three rows sharing a 9-token prefix (run once, its KV cache repeated) and of different
    lengths after it, and two rows sharing none: each row's last logits equal those of the row
    run alone through the model's own forward."""
    model.eval()
    g = torch.Generator().manual_seed(3)
    prefix = torch.randint(3, 1129, (9,), generator=g).tolist()
    shared = [prefix + torch.randint(3, 1129, (n,), generator=g).tolist() for n in (1, 5, 3)]
    apart = [[7, 8, 9, 10], [11, 12]]
    for rows in (shared, apart):
        with torch.no_grad():
            alone = torch.stack([model(input_ids=torch.tensor([r])).logits[0, -1] for r in rows])
        got = logprobs.last_logits(model, rows, pad_id=0)
        assert got.shape == alone.shape
        torch.testing.assert_close(got, alone, rtol=1e-4, atol=1e-4)
    assert logprobs.uses_chunked_head(model)     # so the shared-prefix path is the one checked
