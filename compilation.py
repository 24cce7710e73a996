"""--compile: torch.compile of the training forward, without changing the model.

    compile_for_training(model)        # once, when the module is built
    forward_of(decoder)(input_ids=...)  # logprobs.py, reward_model.py: the compiled callable
                                        # while gradients are on, else the module itself

The hot path of a training step does not go through the model's own forward: logprobs.py
runs the decoder (`model.get_decoder()`, Qwen2's `model.model`) and sends only the supervised
positions through the LM head; a reward model's `base_model` runs the same way
(reward_model.sequence_rewards). So what is compiled is every module a training forward calls
directly: the decoder / base model, and the whole model for the plain paths (a model whose
logits are not head(decoder(x)), an encoder reward model). torch.compile is lazy: nothing is
compiled until a training forward calls it.

The compiled callable (a torch._dynamo OptimizedModule) is kept in the module's __dict__, out
of the module tree: `model.state_dict()` has no `_orig_mod.` keys, so checkpoints and exported
Hugging Face folders are laid out as an uncompiled run's, and either kind of run resumes the
other's checkpoints. `dynamic=True` traces sizes symbolically from the first call: packed and
padded micro-batches of any length reuse one graph (torch still specialises a size of 1, so a
micro-batch of one row is one more graph; tests/test_compile.py counts them).

Only forwards with gradients enabled use it (`forward_of`): validation, precomputed and live
reference log-probs and grpo's old-policy log-probs (all under no_grad) run eagerly, which
saves a second compile for the no-grad graph. Generation (validation replies, grpo rollouts,
the length penalty's samples) calls `model.generate`, which goes through the uncompiled
modules: a compiled decoder would see a KV cache growing by one token each call and
recompile or break its graph every few tokens, for no gain on short replies.
"""
from __future__ import annotations

import torch

ATTRIBUTE = "_compiled_training_forward"


def compile_for_training(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Attach a torch.compile'd callable to `model` and to the module running its transformer
    layers (its base model / decoder); returns the modules that got one."""
    targets = [model]
    for name in ("base_model", "get_decoder"):
        try:
            part = getattr(model, name, None)
            part = part() if callable(part) and not isinstance(part, torch.nn.Module) else part
        except (AttributeError, TypeError, ValueError):     # a model without that split
            continue
        if isinstance(part, torch.nn.Module) and all(part is not t for t in targets):
            targets.append(part)
    for module in targets:
        # object.__setattr__: nn.Module.__setattr__ would register the wrapper as a submodule
        # (and its parameters again under `_orig_mod.`).
        object.__setattr__(module, ATTRIBUTE, torch.compile(module, dynamic=True))
    return targets


def forward_of(module: torch.nn.Module):
    """The compiled callable of `module` when --compile gave it one and gradients are enabled
    (a training forward), else the module itself."""
    compiled = module.__dict__.get(ATTRIBUTE)
    return compiled if compiled is not None and torch.is_grad_enabled() else module


def check_available(use_gpu: bool) -> str | None:
    """Why torch.compile cannot run here (one sentence), or None when it can."""
    if not hasattr(torch, "compile"):
        return f"--compile needs torch.compile (PyTorch 2.0 or later; this is {torch.__version__})."
    try:
        import torch._dynamo as dynamo
        if not dynamo.is_dynamo_supported():
            return "--compile: torch.compile does not support this Python version with this PyTorch build."
        if use_gpu:
            from torch.utils._triton import has_triton
            if not has_triton():
                return "--compile on a GPU needs Triton, which is not installed (pip install triton)."
        else:
            from torch._inductor.cpp_builder import get_cpp_compiler
            get_cpp_compiler()
    except Exception as e:  # noqa: BLE001 - a missing C++ compiler, a broken install
        first = str(e).strip().splitlines()[0].rstrip(".") if str(e).strip() else type(e).__name__
        return f"--compile cannot use torch.compile here: {first}."
    return None
