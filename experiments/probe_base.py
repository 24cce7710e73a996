"""Probe what a base model can do on the bundled task's raw text, optionally after more
pretraining: the experiment behind docs/genrm.md's notes on why the GenRM verifier and DPO do not
improve on the bundled model (GenRM section, "Verification text in pretraining, and a base
model that copies").

    python experiments/probe_base.py                                    # the bundled model
    python experiments/probe_base.py --continue-steps 1600 --out /tmp/base2x
    python experiments/probe_base.py --model /tmp/base2x --continue-steps 800 --lr 1e-3 \\
        --check-frac 0.3 --drill-frac 0.25 --out /tmp/base2x-checks

--continue-steps N pretrains N more steps (batch 8 x 256 tokens, AdamW, cosine from --lr to
a tenth of it) on text made as embedded/build.py makes it ("Question: ...\\nAnswer: ..."
documents, none of them a question of the bundled data files), with two optional kinds of
verification text mixed in:
    --check-frac   a problem, its solution (correct, or with task.py's one slip), "Check:" and a
                   step check, one line per "a op b = c" of the solution:
                   "Step k: a op b = c. Redo: a op b = v. Right." (or "Wrong." when v != c)
    --drill-frac   "Check:" and 1 to 4 such lines on random operands, about half of the claims wrong
Then two probes on the first --problems held-out problems (embedded/data/problems/test.jsonl):
    answers    greedy answers in the pretraining format: share right, and share whose first
               word (the person's name, as every solution begins) is a word of the question:
               copied, not made up
    decisions  teacher-forced step checks of each problem's correct and incorrect solution:
               for every "Right"/"Wrong", whether the model ranks the true word first, for the
               steps that hold and for the slipped ones (meaningful only for a model
               that has seen the check format: --check-frac or --drill-frac)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import sys
import time

# `python <folder>/<script>.py` puts <folder>/ on sys.path, not the repository root that holds storage.py & co.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
from embedded import build, task  # noqa: E402  (build.py: the data files and pretraining text)

STEP = re.compile(r"(\d+) ([+\-*]) (\d+) = (\d+)")
BLOCK, BATCH = 256, 8


def check_line(k: int, a: int, op: str, b: int, c: int) -> str:
    v = task._apply(op, a, b)
    return f"Step {k}: {a} {op} {b} = {c}. Redo: {a} {op} {b} = {v}. {'Right' if v == c else 'Wrong'}."


def step_check(solution: str) -> str:
    return "\n".join(check_line(k, int(m[1]), m[2], int(m[3]), int(m[4]))
                     for k, m in enumerate(STEP.finditer(solution), start=1))


def drill(rng: random.Random) -> str:
    lines = []
    for k in range(1, rng.randint(2, 5)):
        op = rng.choice("+-*")
        if op == "*":
            a, b = rng.randint(0, 33), rng.randint(2, 3)
        elif op == "+":
            a = rng.randint(0, 99)
            b = rng.randint(0, 99 - a)
        else:
            a = rng.randint(0, 99)
            b = rng.randint(0, a)
        c = task._apply(op, a, b)
        if rng.random() < 0.5:
            c2 = c + rng.choice((-10, -3, -2, -1, 1, 2, 3, 10))
            c = c2 if 0 <= c2 <= task.MAX_VALUE else c
        lines.append(check_line(k, a, op, b, c))
    return "Check:\n" + "\n".join(lines)


def documents(rng: random.Random, seen: set, check_frac: float, drill_frac: float):
    while True:
        kind = rng.random()
        if kind < drill_frac:
            yield drill(rng) + "\n\n"
            continue
        multiturn = rng.random() < 0.15
        p = build._new_problem(rng, seen, multiturn=multiturn)
        if not multiturn and kind < drill_frac + check_frac:
            solution = p["solution"] if rng.random() < 0.5 else p["incorrect_solution"]
            yield f"Question: {p['question']}\nAnswer: {solution}\nCheck:\n{step_check(solution)}\n\n"
            continue
        doc = f"Question: {p['question']}\nAnswer: {p['solution']}\n\n"
        if multiturn:
            doc += f"Question: {p['followup_question']}\nAnswer: {p['followup_solution']}\n\n"
        yield doc


def continue_pretraining(model, tokenizer, args) -> None:
    import torch

    _, seen = build.build_data()         # every question of the data files: kept out of the text
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    docs = documents(random.Random(args.seed), seen, args.check_frac, args.drill_frac)
    stream: list[int] = []
    while len(stream) < args.continue_steps * BATCH * BLOCK:
        stream += tokenizer(next(docs), add_special_tokens=False)["input_ids"] + [eot]
    blocks = torch.tensor(stream[: args.continue_steps * BATCH * BLOCK]).view(-1, BATCH, BLOCK)
    torch.manual_seed(args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    model.train()
    start = time.time()
    for step, batch in enumerate(blocks):
        for group in opt.param_groups:   # cosine from lr down to lr / 10
            group["lr"] = args.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * step / len(blocks))))
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 200 == 0 or step == len(blocks) - 1:
            print(f"step {step:5d}/{len(blocks)}  loss {loss.item():.4f}  {time.time() - start:6.1f}s", flush=True)
    model.eval()


def probe_answers(model, tokenizer, rows) -> dict:
    import torch

    tokenizer.padding_side = "left"
    right = copied = 0
    for i in range(0, len(rows), 25):
        chunk = rows[i:i + 25]
        enc = tokenizer([f"Question: {r['question']}\nAnswer:" for r in chunk], return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=100, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        for r, ids in zip(chunk, out):
            reply = tokenizer.decode(ids[enc.input_ids.shape[1]:], skip_special_tokens=True).split("\n")[0].strip()
            right += task.extract_answer(reply) == r["answer"]
            words = set(re.findall(r"\w+", r["question"]))
            copied += bool(reply) and reply.split()[0] in words
    return {"answer_right": right / len(rows), "name_copied": copied / len(rows)}


def probe_decisions(model, tokenizer, rows) -> dict:
    import torch

    first = {w: tokenizer(f" {w}", add_special_tokens=False)["input_ids"][0] for w in ("Right", "Wrong")}
    assert first["Right"] != first["Wrong"], "the tokenizer must tell ' Right' and ' Wrong' apart at once"
    counts = {"Right": [0, 0], "Wrong": [0, 0]}      # truth -> [ranked first, seen]
    for r in rows:
        for solution in (r["correct_solution"], r["incorrect_solution"]):
            text = f"Question: {r['question']}\nAnswer: {solution}\nCheck:\n{step_check(solution)}\n\n"
            enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
            start_of = {s: i for i, (s, _) in enumerate(enc["offset_mapping"])}
            with torch.no_grad():
                logits = model(torch.tensor([enc["input_ids"]])).logits[0]
            for m in re.finditer(r" (Right|Wrong)\.", text):
                pos = start_of[m.start()]
                other = "Wrong" if m[1] == "Right" else "Right"
                counts[m[1]][0] += int(logits[pos - 1, first[m[1]]] > logits[pos - 1, first[other]])
                counts[m[1]][1] += 1
    return {"right_steps_called_right": counts["Right"][0] / counts["Right"][1],
            "wrong_steps_called_wrong": counts["Wrong"][0] / counts["Wrong"][1],
            "steps": {k: v[1] for k, v in counts.items()}}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=os.path.join(REPO, "embedded", "model"), help="a Hugging Face model folder")
    p.add_argument("--continue-steps", type=int, default=0, help="pretraining steps before the probes")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate of --continue-steps")
    p.add_argument("--check-frac", type=float, default=0.0, help="about this share of documents get a step check")
    p.add_argument("--drill-frac", type=float, default=0.0, help="share of documents of check drills")
    p.add_argument("--out", help="save the model here after --continue-steps (a Hugging Face folder)")
    p.add_argument("--problems", type=int, default=200, help="held-out problems probed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if args.continue_steps and not args.out:
        p.error("--continue-steps needs --out, the folder the further-trained model is saved to")
    if not 0 <= args.check_frac + args.drill_frac <= 1:
        p.error("--check-frac plus --drill-frac must be between 0 and 1")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    if args.continue_steps:
        continue_pretraining(model, tokenizer, args)
        model.save_pretrained(args.out)
        tokenizer.save_pretrained(args.out)
        print(f"saved to {args.out}", flush=True)
    rows = [json.loads(line) for line in open(os.path.join(REPO, "embedded", "data", "problems", "test.jsonl"))][: args.problems]
    result = {"model": args.out or args.model, **probe_answers(model, tokenizer, rows),
              **probe_decisions(model, tokenizer, rows)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
