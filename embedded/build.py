"""Rebuild the embedded default model and data sets, deterministically (fixed seeds).

Run from any directory:

    python embedded/build.py                  # data + tokenizer + pretrained tiny model
    python embedded/build.py --data-only      # only the JSONL data files
    python embedded/build.py --skip-pretrain  # data + tokenizer + random-init model
    python embedded/build.py --out /tmp/emb   # write somewhere else (default: this folder)

What it makes under the output folder (task: ``task.py`` arithmetic word problems):

    data/sft/{train,test}.jsonl               smol-smoltalk schema: {"messages", "source"}
    data/prefs/{train,test}_prefs.jsonl       ultrafeedback_binarized schema
    data/problems/{train,test}.jsonl          {"question_id", "question", "answer",
                                               "correct_solution", "incorrect_solution"}
    model/                                    byte-level BPE tokenizer with a ChatML template,
                                              tiny Qwen2ForCausalLM pretrained on raw
                                              "Question: ...\\nAnswer: ..." text (no ChatML)
    pretrain_log.json                         pretraining losses and wall time

No two data files share a question, and the pretraining text avoids all of them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# `python <folder>/<script>.py` puts <folder>/ on sys.path, not the repository root that holds storage.py & co.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
from embedded import task  # noqa: E402

# Split name -> (seed, rows).  Held-out splits are generated first so that de-duplication
# only ever drops rows from training splits.
SPLITS = {
    "sft/test": (1001, 200),
    "prefs/test": (1002, 200),
    "problems/test": (1003, 200),
    "sft/train": (2001, 3000),
    "prefs/train": (2002, 2000),
    "problems/train": (2003, 1000),
}
FILES = {
    "sft/train": "data/sft/train.jsonl",
    "sft/test": "data/sft/test.jsonl",
    "prefs/train": "data/prefs/train_prefs.jsonl",
    "prefs/test": "data/prefs/test_prefs.jsonl",
    "problems/train": "data/problems/train.jsonl",
    "problems/test": "data/problems/test.jsonl",
}
PROBLEM_ID_OFFSET = {"problems/train": 0, "problems/test": 100_000}  # ids unique across files

SYSTEM_PROMPTS = [
    "You are a careful math tutor. Think step by step.",
    "You are a helpful assistant. Solve the problem step by step and finish with "
    "\"The answer is N.\"",
    "You are a patient teacher. Explain each step of the arithmetic briefly.",
    "Solve math word problems with short, clear, step-by-step reasoning.",
    "You are a friendly assistant for elementary school students. Work through every "
    "calculation slowly and state the final result.",
    "Think carefully before answering. Show each addition or subtraction on its own.",
    "You are an expert problem solver. Keep explanations brief and precise.",
    "Always double-check your arithmetic, then give the final number.",
    "You help children practice counting. Use simple words and short sentences.",
    "Respond like a thoughtful tutor: track the quantity after every change in the story.",
]

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VOCAB_SIZE = 1200  # target; the BPE trainer may stop earlier if pairs run out
# ChatML, no default system prompt.  The {% generation %} markers change nothing in the
# rendered text; they let `return_assistant_tokens_mask=True` find the assistant tokens.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}"
    "{%- else %}{{- message['content'] + '<|im_end|>' }}{%- endif %}"
    "{{- '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

MODEL_SEED = 1234
PRETRAIN_SEED = 3001
# ~3.3M tokens, ~5 min on 2 CPU cores.  Small batches on purpose: at the same token budget,
# batch 8 x 1600 steps reached ~77% greedy accuracy on problems/test versus ~49% for
# batch 16 x 800 and ~16% for batch 32 x 400 (the bigger batches never learned to copy much).
PRETRAIN = dict(block=256, batch=8, steps=1600, lr=3e-3, warmup=50, min_lr_frac=0.1,
                weight_decay=0.1, eval_blocks=32)


# ----------------------------------------------------------------------------- data
def _new_problem(rng: random.Random, seen: set, multiturn: bool = False) -> dict:
    """A problem whose question is in no other split (``seen`` is updated)."""
    while True:
        p = task.make_multiturn(rng) if multiturn else task.make_problem(rng)
        if p["question"] not in seen:
            seen.add(p["question"])
            return p


def _sft_row(rng: random.Random, seen: set) -> dict:
    r = rng.random()  # ~60% single turn, ~20% multi-turn, ~20% with a system prompt
    if r < 0.6:
        p = _new_problem(rng, seen)
        messages = [{"role": "user", "content": p["question"]},
                    {"role": "assistant", "content": p["solution"]}]
        return {"messages": messages, "source": "arithmetic-single"}
    if r < 0.8:
        p = _new_problem(rng, seen, multiturn=True)
        messages = [{"role": "user", "content": p["question"]},
                    {"role": "assistant", "content": p["solution"]},
                    {"role": "user", "content": p["followup_question"]},
                    {"role": "assistant", "content": p["followup_solution"]}]
        return {"messages": messages, "source": "arithmetic-multiturn"}
    system = rng.choice(SYSTEM_PROMPTS)
    p = _new_problem(rng, seen)
    messages = [{"role": "system", "content": system},
                {"role": "user", "content": p["question"]},
                {"role": "assistant", "content": p["solution"]}]
    return {"messages": messages, "source": "arithmetic-system"}


def _prefs_row(rng: random.Random, seen: set) -> dict:
    p = _new_problem(rng, seen)
    prompt = p["question"]
    chosen = [{"role": "user", "content": prompt}, {"role": "assistant", "content": p["solution"]}]
    rejected = [{"role": "user", "content": prompt},
                {"role": "assistant", "content": p["incorrect_solution"]}]
    return {
        "prompt": prompt,
        "prompt_id": hashlib.sha256(prompt.encode("utf-8")).hexdigest(),
        "chosen": chosen,
        "rejected": rejected,
        "messages": chosen,
        # Ultrafeedback-like 1..10 ratings; correct always outranks incorrect.
        "score_chosen": rng.choice([8.0, 8.5, 9.0, 9.5, 10.0]),
        "score_rejected": rng.choice([1.0, 2.0, 3.0, 4.0, 5.0]),
    }


def preference_pairs(rows: list[dict]) -> list[dict]:
    """The written preference pairs: every third row (index % 3 == 2) gets a bare wrong
    answer as its rejected reply, "The answer is N." with the one-slip solution's N and no
    working, in place of that solution. Real preference sets mix kinds of rejected reply:
    the slip needs the arithmetic checked, the bare answer is a style cue that any reward
    model picks up (docs/results.md reports a Bradley-Terry model's accuracy on each kind).
    Applied to the written files only: the tokenizer was trained on the generated pairs, and
    its corpus is kept as it was so that the bundled tokenizer and model stay what this
    script builds."""
    out = []
    for i, row in enumerate(rows):
        if i % 3 == 2:
            wrong = task.extract_answer(row["rejected"][1]["content"])
            row = {**row, "rejected": [row["rejected"][0], {"role": "assistant", "content": f"The answer is {wrong}."}]}
        out.append(row)
    return out


def _problems_row(rng: random.Random, seen: set, question_id: int) -> dict:
    p = _new_problem(rng, seen)
    return {"question_id": question_id, "question": p["question"], "answer": p["answer"],
            "correct_solution": p["solution"], "incorrect_solution": p["incorrect_solution"]}


def build_data() -> tuple[dict[str, list[dict]], set]:
    """All splits, plus the set of every question used (to keep pretraining text disjoint)."""
    seen: set = set()
    data = {}
    for split, (seed, n) in SPLITS.items():
        rng = random.Random(seed)
        kind = split.split("/")[0]
        if kind == "sft":
            rows = [_sft_row(rng, seen) for _ in range(n)]
        elif kind == "prefs":
            rows = [_prefs_row(rng, seen) for _ in range(n)]
        else:
            rows = [_problems_row(rng, seen, PROBLEM_ID_OFFSET[split] + i) for i in range(n)]
        data[split] = rows
    return data, seen


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------- tokenizer
def tokenizer_corpus(data: dict[str, list[dict]]) -> list[str]:
    """Training text: "role\\ncontent" per message, so role names get merges too.  Special
    tokens are left out: the BPE trainer does not split them off and would learn "<|" merges."""
    texts = []
    for row in data["sft/train"]:
        texts += [f"{m['role']}\n{m['content']}" for m in row["messages"]]
    for row in data["prefs/train"]:
        texts += [f"user\n{row['prompt']}", f"assistant\n{row['chosen'][1]['content']}",
                  f"assistant\n{row['rejected'][1]['content']}"]
    return texts


def build_tokenizer(texts: list[str]):
    """Byte-level BPE trained on ``texts`` with exactly Qwen2's normalizer and pre-tokenizer.

    Exactly Qwen2's, not merely similar: transformers 5 loads any tokenizer of a
    ``model_type: qwen2`` checkpoint as ``Qwen2Tokenizer``, which rebuilds the pipeline
    (NFC, Qwen2's split regex, ByteLevel without regex) around the saved vocab and merges.
    Training with the same pipeline keeps the merges consistent with how the tokenizer is
    used later.  That regex isolates every digit (\\p{N}), so numbers are read digit by digit.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    reference = Qwen2Tokenizer()  # an empty Qwen2 tokenizer, only to borrow its pipeline
    tok = Tokenizer(models.BPE())  # byte-level: every byte is in the alphabet, so no unk
    tok.normalizer = reference.backend_tokenizer.normalizer
    tok.pre_tokenizer = reference.backend_tokenizer.pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, min_frequency=2, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)

    trained = json.loads(tok.to_str())["model"]
    tokenizer = Qwen2Tokenizer(
        vocab=trained["vocab"],
        merges=[tuple(m) for m in trained["merges"]],  # tokenizers >= 0.20 stores pairs
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,  # byte-level BPE never needs one
        bos_token=None,
        extra_special_tokens=["<|im_start|>"],
        padding_side="right",
        model_max_length=1024,
        clean_up_tokenization_spaces=False,  # keep decode(encode(x)) == x
        chat_template=CHAT_TEMPLATE,
    )
    # The Qwen2Tokenizer must tokenize exactly like the tokenizer the merges were trained with.
    for text in texts[:500]:
        assert tokenizer.encode(text, add_special_tokens=False) == tok.encode(text).ids, text
    return tokenizer


def check_tokenizer(tokenizer, texts: list[str]) -> None:
    """Fail loudly if the properties the trainer relies on do not hold."""
    for d in "0123456789":
        assert len(tokenizer.encode(d, add_special_tokens=False)) == 1, d
    ids = tokenizer.encode("Mia has 1234 apples", add_special_tokens=False)
    pieces = tokenizer.convert_ids_to_tokens(ids)
    assert all(p in pieces for p in "1234"), pieces
    for t in SPECIAL_TOKENS:
        assert len(tokenizer.encode(t, add_special_tokens=False)) == 1, t
    assert tokenizer.encode("hi", add_special_tokens=True) == tokenizer.encode(
        "hi", add_special_tokens=False), "no bos/eos should be added"
    for text in texts:
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text, text
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", chat


# ----------------------------------------------------------------------------- model
def build_model(tokenizer):
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    eos, pad = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=384,
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=1024, tie_word_embeddings=True, attention_dropout=0.0,
        eos_token_id=eos, pad_token_id=pad, bos_token_id=None, dtype="float32",
    )
    torch.manual_seed(MODEL_SEED)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad,
                                               bos_token_id=None)
    return model


def pretrain_blocks(tokenizer, seen: set, n_blocks: int, block: int):
    """Raw text documents (never ChatML), tokenized, joined with <|endoftext|> and cut
    into fixed-length blocks, as in ordinary LM pretraining."""
    import torch

    rng = random.Random(PRETRAIN_SEED)
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    stream: list[int] = []
    while len(stream) < n_blocks * block:
        docs = []
        for _ in range(2000):
            multiturn = rng.random() < 0.15
            p = _new_problem(rng, seen, multiturn=multiturn)  # also avoids every data file
            doc = f"Question: {p['question']}\nAnswer: {p['solution']}\n\n"
            if multiturn:
                doc += f"Question: {p['followup_question']}\nAnswer: {p['followup_solution']}\n\n"
            docs.append(doc)
        for ids in tokenizer(docs, add_special_tokens=False)["input_ids"]:
            stream += ids + [eot]
    return torch.tensor(stream[: n_blocks * block]).view(n_blocks, block)


def pretrain(model, tokenizer, seen: set) -> dict:
    import torch

    cfg = PRETRAIN
    torch.set_num_threads(2)
    torch.manual_seed(PRETRAIN_SEED)
    n_train = cfg["steps"] * cfg["batch"]
    blocks = pretrain_blocks(tokenizer, seen, n_train + cfg["eval_blocks"], cfg["block"])
    train, held_out = blocks[:n_train], blocks[n_train:]
    print(f"pretraining on {n_train} blocks x {cfg['block']} tokens "
          f"({n_train * cfg['block'] / 1e6:.1f}M tokens), {cfg['steps']} steps", flush=True)

    # Decay only matrices (not norms/biases), the usual GPT recipe.
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg["weight_decay"]},
         {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
        lr=cfg["lr"], betas=(0.9, 0.95))

    def lr_at(step: int) -> float:  # linear warmup, then cosine down to min_lr_frac * lr
        if step < cfg["warmup"]:
            return cfg["lr"] * (step + 1) / cfg["warmup"]
        t = (step - cfg["warmup"]) / max(1, cfg["steps"] - cfg["warmup"])
        cosine = 0.5 * (1 + math.cos(math.pi * t))
        return cfg["lr"] * (cfg["min_lr_frac"] + (1 - cfg["min_lr_frac"]) * cosine)

    @torch.no_grad()
    def eval_loss() -> float:
        model.eval()
        loss = model(input_ids=held_out, labels=held_out).loss.item()
        model.train()
        return loss

    log = {"eval_loss_start": eval_loss(), "train_loss": []}
    print(f"held-out loss before pretraining: {log['eval_loss_start']:.4f}", flush=True)
    order = torch.randperm(n_train)
    model.train()
    start = time.time()
    for step in range(cfg["steps"]):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        batch = train[order[step * cfg["batch"]:(step + 1) * cfg["batch"]]]
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        log["train_loss"].append(round(loss.item(), 4))
        if step % 100 == 0 or step == cfg["steps"] - 1:
            print(f"step {step:4d}/{cfg['steps']}  loss {loss.item():.4f}  lr {lr_at(step):.2e}  "
                  f"{time.time() - start:6.1f}s", flush=True)
    log["wall_s"] = round(time.time() - start, 1)
    log["eval_loss_end"] = eval_loss()
    print(f"held-out loss after pretraining: {log['eval_loss_end']:.4f} "
          f"(train loss {log['train_loss'][0]:.4f} -> {log['train_loss'][-1]:.4f}, "
          f"{log['wall_s']}s)", flush=True)
    log["config"] = cfg
    return log


# ----------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-only", action="store_true", help="only write the data files")
    parser.add_argument("--skip-pretrain", action="store_true",
                        help="save the tokenizer and a random-init model, no pretraining")
    parser.add_argument("--out", type=Path, default=HERE,
                        help="output folder (default: %(default)s)")
    args = parser.parse_args()
    out = args.out.resolve()

    data, seen = build_data()
    for split, rows in data.items():
        write_jsonl(out / FILES[split], preference_pairs(rows) if split.startswith("prefs/") else rows)
        print(f"wrote {len(rows):5d} rows to {out / FILES[split]}", flush=True)
    if args.data_only:
        return

    texts = tokenizer_corpus(data)
    tokenizer = build_tokenizer(texts)
    check_tokenizer(tokenizer, texts)
    model_dir = out / "model"
    tokenizer.save_pretrained(model_dir)
    print(f"tokenizer: {len(tokenizer)} tokens, saved to {model_dir}", flush=True)

    model = build_model(tokenizer)
    print(f"model: {sum(p.numel() for p in model.parameters()):,} parameters", flush=True)
    if not args.skip_pretrain:
        log = pretrain(model, tokenizer, seen)
        (out / "pretrain_log.json").write_text(json.dumps(log, indent=1) + "\n")
    model.save_pretrained(model_dir)  # safetensors (the only format transformers 5 writes)
    print(f"model saved to {model_dir}", flush=True)


if __name__ == "__main__":
    main()
