"""Per-token log-probabilities of a causal LM without the full (tokens x vocab) logits.

    logps = token_logps(model, input_ids, attention_mask, labels)     # (N, T-1), 0 where not labelled
    seq = sequence_logps(model, input_ids, attention_mask, labels)    # (N,) sums: DPO's log pi(y|x)
    pairs = preference_logps(model, batch)      # (2B,) the same for a PreferenceBatch, packed or not

The decoder runs once to give hidden states (N, T, H); only the positions whose next label is
not -100 are kept (M of them), and those go through the output embedding (the LM head, tied or
not) in chunks of rows, each chunk's logits scored (log-softmax at the label) and dropped. The
backward pass recomputes each chunk's logits instead of keeping them (ChunkedLabelLogps), so
neither pass ever holds more than one chunk of logits: with Qwen2.5's 151,936-token vocabulary
and 4,096 tokens a batch, the full fp32 logits alone would be 2.5 GB, and their log-softmax
and gradient as much again. The result equals the plain path (logits -> log_softmax -> gather)
to float32 rounding; tests/test_logprobs.py checks values and gradients.

Models whose logits are not `head(decoder(x))` (logit soft-capping or scaling, as in Gemma 2,
Cohere or Granite), models without a separate decoder, and FSDP-wrapped models take the plain
path: one full forward, log-softmax, gather. Which path a model takes is decided once per model
by comparing both on a tiny input (`uses_chunked_head`).

Packed rows (several sequences in one row, `position_ids` restarting at 0 at each boundary)
are passed with `attention_mask=None`: transformers then keeps attention within each sequence
(masking_utils.find_packed_sequence_indices), which needs `use_cache=False`, passed here.
"""
from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F

from compilation import forward_of
from losses.labels import IGNORE_INDEX
# Logit elements per chunk (fp32: 128 MiB): 220 rows for Qwen2.5's vocabulary.
CHUNK_ELEMENTS = 1 << 25
_CHUNKED_OK: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # model -> bool


class ChunkedLabelLogps(torch.autograd.Function):
    """log softmax(hidden @ weight.T + bias)[label] row by row, in chunks of rows.

    forward(hidden (M, H), weight (V, H), bias (V,) or None, labels (M,) long, chunk int)
        -> (M,) float32 log-probs.
    Saved for backward: the inputs and the (M,) log-sum-exp, never a chunk's logits; the
    backward pass recomputes them: d logp / d logits = onehot(label) - softmax(logits).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, chunk):
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(out)
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, start + chunk)
            logits = F.linear(hidden[rows], weight, bias).float()                   # (c, V)
            lse[rows] = torch.logsumexp(logits, dim=-1)
            out[rows] = logits.gather(1, labels[rows, None]).squeeze(1) - lse[rows]
        ctx.save_for_backward(hidden, weight, bias, labels, lse)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, bias, labels, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_b else None
        for start in range(0, hidden.shape[0], ctx.chunk):
            rows = slice(start, start + ctx.chunk)
            logits = F.linear(hidden[rows], weight, bias).float()                   # (c, V)
            # d/d logits of g * (logits[label] - lse) = g * (onehot - softmax)
            grad_logits = torch.exp(logits - lse[rows, None]).mul_(-grad_out[rows, None])
            grad_logits.scatter_add_(1, labels[rows, None], grad_out[rows, None].float())
            if need_h:
                grad_h[rows] = (grad_logits.to(weight.dtype) @ weight).to(hidden.dtype)
            if need_w:
                grad_w += grad_logits.t() @ hidden[rows].float()
            if need_b:
                grad_b += grad_logits.sum(0)
        return (grad_h, grad_w.to(weight.dtype) if need_w else None,
                grad_b.to(bias.dtype) if need_b else None, None, None)


def _parts(model):
    """(decoder, head) of an HF causal LM, or None where the model has no such split."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if not isinstance(head, torch.nn.Linear) or decoder is None or decoder is model:
        return None
    return decoder, head


def uses_chunked_head(model) -> bool:
    """Whether the model's logits are exactly head(decoder(x)): checked once per model on a
    1 x 4 input in eval mode (no dropout), against the model's own forward."""
    if model not in _CHUNKED_OK:
        parts = _parts(model)
        ok = False
        if parts is not None and not any(type(m).__name__.startswith("FullyShardedDataParallel")
                                         for m in model.modules()):
            decoder, head = parts
            was_training = model.training
            model.eval()
            try:
                with torch.no_grad():
                    ids = torch.zeros(1, 4, dtype=torch.long, device=head.weight.device)
                    ids[0, 1:] = torch.arange(1, 4) % head.weight.shape[0]
                    full = model(input_ids=ids, use_cache=False).logits.float()
                    split = head(decoder(input_ids=ids, use_cache=False).last_hidden_state).float()
                ok = full.shape == split.shape and torch.allclose(full, split, rtol=1e-4, atol=1e-4)
            except (TypeError, AttributeError, ValueError):
                ok = False
            finally:
                model.train(was_training)
        _CHUNKED_OK[model] = ok
    return _CHUNKED_OK[model]


_PACKING_OK: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # model -> bool


def supports_packing(model) -> bool:
    """Whether packed rows (position_ids restarting, attention_mask None) keep attention within
    each sequence in this model: checked once per model, in eval mode, by comparing the hidden
    states of two 4-token sequences run packed in one row with the same two run as separate
    rows (the decoder's, so causal LMs and reward models are checked alike)."""
    if model not in _PACKING_OK:
        was_training = model.training
        model.eval()
        base = getattr(model, "base_model", model)
        try:
            with torch.no_grad():
                device = next(model.parameters()).device
                vocab = model.get_input_embeddings().weight.shape[0]
                ids = (torch.arange(8, device=device) * 7 + 3) % vocab
                apart = base(input_ids=ids.view(2, 4), use_cache=False).last_hidden_state.float()
                together = base(input_ids=ids.view(1, 8), position_ids=torch.arange(4, device=device).repeat(1, 2),
                                use_cache=False).last_hidden_state.float()
            _PACKING_OK[model] = torch.allclose(apart.reshape(1, 8, -1), together, rtol=1e-4, atol=1e-4)
        except (TypeError, AttributeError, ValueError):      # no position_ids or no hidden states: no packing
            _PACKING_OK[model] = False
        finally:
            model.train(was_training)
    return _PACKING_OK[model]


def token_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Log-probability of each next labelled token.

    Args:
        model: a causal LM (AutoModelForCausalLM-style).
        input_ids: (N, T) long.
        attention_mask: (N, T) 1 on real tokens, or None for packed rows (with position_ids).
        labels: (N, T) long; labels[:, t] is token t's target id, -100 where it does not count.
        position_ids: (N, T) long or None (0, 1, 2, ... per row).
    Returns:
        (N, T-1) float32: entry [n, t] = log p(labels[n, t+1] | tokens <= t), 0 where the label
        is -100. Differentiable with respect to the model's parameters.
    """
    shift_labels = labels[:, 1:]                                                    # (N, T-1)
    mask = shift_labels != IGNORE_INDEX
    if not uses_chunked_head(model):
        logits = forward_of(model)(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                   use_cache=False).logits[:, :-1].float()         # (N, T-1, V)
        safe = shift_labels.masked_fill(~mask, 0)
        picked = torch.gather(F.log_softmax(logits, dim=-1), 2, safe.unsqueeze(-1)).squeeze(-1)
        return picked * mask
    decoder, head = _parts(model)
    # --compile: the decoder's compiled forward in training (compilation.py).
    hidden = forward_of(decoder)(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                 use_cache=False).last_hidden_state                 # (N, T, H)
    selected = hidden[:, :-1][mask]                                                 # (M, H)
    chunk = max(1, CHUNK_ELEMENTS // head.weight.shape[0])
    picked = ChunkedLabelLogps.apply(selected, head.weight, head.bias, shift_labels[mask], chunk)   # (M,)
    out = torch.zeros(shift_labels.shape, dtype=torch.float32, device=picked.device)
    return out.masked_scatter(mask, picked)


def last_logits(model, rows: list[list[int]], pad_id: int) -> torch.Tensor:
    """(N, V) float32 next-token logits after each token-id row's last token, without gradients.

    The head runs on those N positions only (the full logits of 32 rationales of 300 tokens
    would be 1.9 GB), and the longest token prefix that all rows share runs once, its KV cache
    repeated for every row: a verifier's K rationales of one solution share its prompt, which
    is most of each row. Models without a separate head (uses_chunked_head) run each row whole.
    """
    device = next(model.parameters()).device
    chunked = uses_chunked_head(model)
    shared = 0
    if chunked and len(rows) > 1:      # the prefix leaves each row at least one token of its own
        limit = min(len(r) for r in rows) - 1
        while shared < limit and all(r[shared] == rows[0][shared] for r in rows):
            shared += 1
    tails = [r[shared:] for r in rows]
    longest = max(len(t) for t in tails)
    input_ids = torch.full((len(rows), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for i, tail in enumerate(tails):          # right padding: each row's last real position is read
        input_ids[i, :len(tail)] = torch.tensor(tail)
        attention_mask[i, :len(tail)] = 1
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    picked = (torch.arange(len(rows), device=device), torch.tensor([len(t) - 1 for t in tails], device=device))
    with torch.no_grad():
        if not chunked:
            return model(input_ids=input_ids, attention_mask=attention_mask).logits[picked].float()
        decoder, head = _parts(model)
        extra = {}
        if shared:
            cache = decoder(input_ids=torch.tensor([rows[0][:shared]], device=device), use_cache=True).cache
            cache.batch_repeat_interleave(len(rows))
            extra = dict(cache=cache, position_ids=shared + torch.arange(longest, device=device).expand(len(rows), -1))
            attention_mask = torch.cat([attention_mask.new_ones(len(rows), shared), attention_mask], dim=1)
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=bool(shared),
                         **extra).last_hidden_state
        return head(hidden[picked]).float()


def sequence_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor,
                   position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """(N,) float32 sums of token_logps over each row's labelled tokens (0 for none)."""
    return token_logps(model, input_ids, attention_mask, labels, position_ids).sum(dim=-1)


def batch_attention_mask(model, batch) -> torch.Tensor | None:
    """The batch's attention mask, or None for packed rows (SFTBatch or PreferenceBatch with
    position_ids): their positions say where each sequence starts, once the model is known
    to keep attention within each one."""
    if batch.position_ids is None:
        return batch.attention_mask
    if not supports_packing(model):
        raise RuntimeError(f"{type(model).__name__} does not keep attention within packed "
                           f"sequences (its mask ignores position_ids); train with --no-packing.")
    return None


def preference_logps(model, batch) -> torch.Tensor:
    """(2B,) summed completion log-probs of a PreferenceBatch's sequences (packed or not) under
    `model`: the policy's in DPO's step, the reference's in reference_logps.py; (B,) of a
    KTOBatch's completions or mismatched sequences (an SFTBatch layout) in kto's."""
    return batch.per_sequence(token_logps(model, batch.input_ids, batch_attention_mask(model, batch),
                                          batch.labels, batch.position_ids))
