"""generation.nucleus_from_top_k keeps what transformers' TopPLogitsWarper keeps (rows whose
nucleus fits in the top k, rows that fall back to the whole sort, a one-token nucleus), and
sampling through it draws the tokens that generate draws with transformers' own top-p."""
import pytest
import torch

from conftest import EMBEDDED_MODEL


def test_the_kept_tokens_equal_transformers_top_p():
    from transformers.generation.logits_process import TopPLogitsWarper
    from generation import nucleus_from_top_k
    g = torch.Generator().manual_seed(0)
    vocab = 5000
    peaked = torch.randn(4, vocab, generator=g) * 6          # a few tokens hold most of the mass
    flat = torch.randn(2, vocab, generator=g) * 0.1          # the nucleus spans thousands: the fallback
    one = torch.zeros(1, vocab)
    one[0, 7] = 50.0                                         # the likeliest alone passes top_p
    scores = torch.cat([peaked, flat, one])
    for top_p in (0.5, 0.9, 0.95):
        ours = nucleus_from_top_k(scores, top_p, k=64)
        theirs = TopPLogitsWarper(top_p)(None, scores)
        assert torch.equal(torch.isfinite(ours), torch.isfinite(theirs))
        assert torch.equal(ours[torch.isfinite(ours)], scores[torch.isfinite(theirs)])
        kept = torch.isfinite(ours).sum(-1)
        assert (kept[:4] <= 64).all() and (kept[4:6] > 64).all() and kept[6] == 1   # both paths ran


def test_sampling_draws_the_tokens_of_transformers_top_p(tokenizer):
    """The bundled model, 3 prompts x 4 samples at temperature 0.7 and top_p 0.9 under one seed:
    generate with our processor (what generation.py passes) and with transformers' temperature and
    top_p. (generate runs a caller's processors before its own warpers: a nucleus taken before the
    temperature made these differ.)"""
    from generation import _decoding
    from models import load_causal_lm
    model = load_causal_lm(str(EMBEDDED_MODEL)).eval()
    ids = torch.tensor([tokenizer("Add 12 and 30.", add_special_tokens=False)["input_ids"]] * 3)
    runs = []
    for decoding in (_decoding(0.7, 0.9), dict(do_sample=True, temperature=0.7, top_p=0.9, top_k=None)):
        torch.manual_seed(11)
        with torch.no_grad():
            runs.append(model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=24,
                                       num_return_sequences=4, pad_token_id=tokenizer.pad_token_id, **decoding))
    assert "logits_processor" in _decoding(0.7, 0.9) and "logits_processor" not in _decoding(0.7, 1.0)
    assert "logits_processor" not in _decoding(0.7, 0.9, num_beams=2)     # beams keep transformers' own
    assert torch.equal(runs[0], runs[1])
    assert len({tuple(r.tolist()) for r in runs[0]}) > 1       # sampled, not one greedy sequence repeated
