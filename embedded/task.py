"""Synthetic arithmetic word problems small enough for a tiny model to learn on CPU.

Stdlib only, so data builders, reward functions and tests can import it anywhere.

Every problem is a chain of 1 to 3 steps on small numbers (every intermediate value stays
in 0..99; mostly + and -, sometimes * 2 or * 3).  The solution walks the chain one
sentence per step and always ends with "The answer is N."  For preference / verifier
work each problem also carries an ``incorrect_solution``: the same text with one
arithmetic slip in one step, carried through the later steps, so it ends in a wrong
"The answer is M."

Public API:
    make_problem(rng)   -> {"question", "solution", "answer", "steps", "incorrect_solution"}
    make_multiturn(rng) -> make_problem(...) plus a follow-up turn on the same story
    extract_answer(text) -> int | None
"""

from __future__ import annotations

import random
import re

__all__ = ["make_problem", "make_multiturn", "extract_answer", "MAX_VALUE"]

MAX_VALUE = 99  # every number in a problem or (correct or incorrect) solution is in 0..99

# (name, subject pronoun, object pronoun, possessive)
_PEOPLE = [
    (name, "she", "her", "her")
    for name in ["Mia", "Emma", "Ava", "Lily", "Zoe", "Nora", "Ella", "Ruby", "Anna", "Sara",
                 "Maya", "Lucy", "Ivy", "Grace", "Chloe", "Hana", "Olivia", "Sofia", "Amelia",
                 "Clara", "Elena", "Fatima", "Priya", "Yuki", "Leila", "Rosa", "Julia", "Alice",
                 "Nadia", "Ingrid", "Beatrice", "Camila", "Wendy", "Harriet", "Marisol",
                 "Tamsin"]
] + [
    (name, "he", "him", "his")
    for name in ["Leo", "Sam", "Noah", "Ben", "Omar", "Jack", "Luke", "Ryan", "Tom", "Max",
                 "Ethan", "Owen", "Kai", "Adam", "Hugo", "Ravi", "Lucas", "Mateo", "Henry",
                 "Daniel", "Felix", "Arjun", "Kenji", "Tariq", "Diego", "Oscar", "Victor", "Peter",
                 "Gustavo", "Winston", "Bartholomew", "Ignatius", "Rupert", "Dmitri",
                 "Sebastian", "Finnegan"]
]

_OBJECTS = ["apples", "marbles", "stickers", "books", "pencils", "coins", "cookies", "cards",
            "shells", "stamps", "eggs", "balloons", "toy cars", "flowers", "candies", "beads",
            "crayons", "blocks", "oranges", "buttons", "bananas", "cupcakes", "feathers",
            "postcards", "seashells", "tickets", "puzzles", "comic books", "paper planes",
            "strawberries", "lemons", "muffins", "rubber ducks", "keychains", "badges", "rocks",
            "pinecones", "walnuts", "dinosaur figures", "origami cranes", "jellybeans", "thimbles"]

# Actions on the main person's count.  Fields: op, question verb phrase (the main person is
# the subject), solution clause.  "{O}" is another person; "{obj}" the main person's object
# pronoun.  An action whose phrase starts with "{O}" has its own subject.
_ACTIONS = [
    ("+", "buys {n} more", "After buying {n} more"),
    ("+", "finds {n} more", "After finding {n} more"),
    ("+", "gets {n} more from {O}", "After getting {n} from {O}"),
    ("+", "wins {n} more", "After winning {n} more"),
    ("+", "picks up {n} more", "After picking up {n} more"),
    ("+", "collects {n} more", "After collecting {n} more"),
    ("+", "receives {n} more as a gift", "After receiving {n} as a gift"),
    ("+", "makes {n} more", "After making {n} more"),
    ("+", "{O} gives {obj} {n} more", "After {O} gives {obj} {n} more"),
    ("-", "gives {n} to {O}", "After giving {n} to {O}"),
    ("-", "loses {n}", "After losing {n}"),
    ("-", "sells {n}", "After selling {n}"),
    ("-", "donates {n}", "After donating {n}"),
    ("-", "trades away {n}", "After trading away {n}"),
    ("-", "breaks {n}", "After breaking {n}"),
    ("-", "hands {n} to {O}", "After handing {n} to {O}"),
    ("-", "{O} takes {n} of them", "After {O} takes {n}"),
    ("*", "doubles {pos} {things}", "After doubling them"),
    ("*", "triples {pos} {things}", "After tripling them"),
]

_OPENINGS = [
    "{Name} has {a} {things}.",
    "{Name} owns {a} {things}.",
    "There are {a} {things} in {Name}'s box.",
    "{Name} keeps {a} {things} in a drawer.",
    "At first, {Name} has {a} {things}.",
]

_ENDINGS = [
    "How many {things} does {Name} have now?",
    "How many {things} does {s} have now?",
    "How many {things} does {Name} have at the end?",
    "How many {things} are left with {Name} in the end?",
    "What is the number of {things} {Name} has now?",
]

_SYMBOL = {"+": "+", "-": "-", "*": "*"}


def _apply(op: str, a: int, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


# ----------------------------------------------------------------------------- chains
# A problem is a start value plus a list of steps (op, operand, render).  render(a, b, r)
# writes the solution sentence for "a op b = r"; it takes values rather than baking them in
# so the same steps can be re-rendered with a wrong value for the incorrect solution.


def _trace(start: int, steps: list, slip_at: int = -1, slip: int = 0) -> list[int]:
    """Values after each step; optionally add ``slip`` to the result of step ``slip_at``."""
    values, cur = [], start
    for i, (op, b, _) in enumerate(steps):
        cur = _apply(op, cur, b) + (slip if i == slip_at else 0)
        values.append(cur)
    return values


def _render(intro: str, start: int, steps: list, values: list[int]) -> str:
    parts = [intro] if intro else []
    prev = start
    for (op, b, render), r in zip(steps, values):
        parts.append(render(prev, b, r))
        prev = r
    parts.append(f"The answer is {values[-1]}.")
    return " ".join(parts)


def _incorrect(rng: random.Random, intro: str, start: int, steps: list) -> str:
    """One slip (off by 1..3, or by 10 like a carry error) in one step, carried forward."""
    correct = _trace(start, steps)
    candidates = [(i, d) for i in range(len(steps)) for d in (-10, -3, -2, -1, 1, 2, 3, 10)]
    rng.shuffle(candidates)
    for i, d in candidates:
        values = _trace(start, steps, i, d)
        # +, - and * 2/3 all keep a nonzero error nonzero, but check rather than trust it.
        if values[-1] != correct[-1] and all(0 <= v <= MAX_VALUE for v in values):
            return _render(intro, start, steps, values)
    raise AssertionError("no valid slip")  # unreachable: a +1 or -1 slip always fits somewhere


def _pick_action(rng: random.Random, cur: int):
    """A random action whose operand keeps the result in 1..99: (op, phrase, clause, n)."""
    while True:
        op, phrase, clause = rng.choice(_ACTIONS)
        if op == "*":
            if rng.random() < 0.6:  # keep multiplication rare
                continue
            n = 2 if phrase.startswith("doubles") else 3
            if cur * n > MAX_VALUE:
                continue
        elif op == "+":
            if cur > MAX_VALUE - 1:
                continue
            n = rng.randint(1, min(20, MAX_VALUE - cur))
        else:
            if cur < 2:
                continue
            n = rng.randint(1, min(20, cur - 1))
        return op, phrase, clause, n


def _person_chain(rng: random.Random, n_steps: int, person=None, things=None, start=None):
    """Story about one person whose count changes ``n_steps`` times."""
    person = person or rng.choice(_PEOPLE)
    name, s, obj, pos = person
    other = rng.choice([p for p in _PEOPLE if p[0] != name])[0]
    things = things or rng.choice(_OBJECTS)
    start = rng.randint(2, 30) if start is None else start

    fmt = dict(Name=name, s=s, obj=obj, pos=pos, O=other, things=things)
    clauses, steps, cur = [], [], start
    for _ in range(n_steps):
        op, phrase, clause, n = _pick_action(rng, cur)
        fmt["n"] = n
        text = phrase.format(**fmt)
        # The action's own subject ("Leo gives her ...") or the main person's verb phrase.
        clauses.append((text, phrase.startswith("{O}")))
        sentence = clause.format(**fmt)

        def render(a, b, r, sentence=sentence, op=op):
            return f"{sentence} {s} has {a} {_SYMBOL[op]} {b} = {r}."

        steps.append((op, n, render))
        cur = _apply(op, cur, n)
    return fmt, start, clauses, steps


def _join_clauses(rng: random.Random, s: str, clauses: list) -> str:
    """Turn verb phrases into one or more sentences, varying the connectives."""

    def full(text, own_subject):
        return text if own_subject else f"{s} {text}"

    first = _cap(full(*clauses[0]))
    if len(clauses) == 1:
        return first + "."
    rest = clauses[1:]
    if rng.random() < 0.5:
        # One sentence: "She buys 3 more, then gives 2 to Leo, and then finds 5 more."
        tail = [text for text, _ in rest]  # the main person's subject is implied
        if len(tail) == 1:
            return f"{first} and then {tail[0]}."
        return f"{first}, then {tail[0]}, and then {tail[1]}."
    # Separate sentences: "She buys 3 more. Then she gives 2 to Leo. Finally ..."
    words = ["Then", "Finally"] if len(rest) == 2 else ["Then"]
    return " ".join([first + "."] + [f"{w} {full(t, own)}." for w, (t, own) in zip(words, rest)])


def _single_person(rng: random.Random, n_steps: int):
    fmt, start, clauses, steps = _person_chain(rng, n_steps)
    opening = rng.choice(_OPENINGS).format(a=start, **fmt)
    question = " ".join([opening, _join_clauses(rng, fmt["s"], clauses),
                         rng.choice(_ENDINGS).format(**fmt)])
    intro = f"{fmt['Name']} starts with {start} {fmt['things']}."
    return question, intro, start, steps, fmt


def _two_people(rng: random.Random):
    """Comparisons between two people: a sum, a difference, or "d more than" then a sum."""
    (a_name, *_), (b_name, *_) = rng.sample(_PEOPLE, 2)
    things = rng.choice(_OBJECTS)
    kind = rng.choice(["together", "difference", "more_than"])
    if kind == "together":
        x, y = rng.randint(2, 49), rng.randint(2, 49)
        question = (f"{a_name} has {x} {things} and {b_name} has {y} {things}. "
                    f"How many {things} do they have together?")
        steps = [("+", y, lambda a, b, r: f"{a_name} has {a} and {b_name} has {b}, "
                  f"so together they have {a} + {b} = {r}.")]
        return question, "", x, steps
    if kind == "difference":
        y = rng.randint(2, 60)
        x = rng.randint(y + 1, MAX_VALUE)
        question = (f"{a_name} has {x} {things}. {b_name} has {y} {things}. "
                    f"How many more {things} does {a_name} have than {b_name}?")
        steps = [("-", y, lambda a, b, r: f"{a_name} has {a} and {b_name} has {b}, "
                  f"so {a_name} has {a} - {b} = {r} more.")]
        return question, "", x, steps
    x, d = rng.randint(2, 40), rng.randint(1, 15)
    question = (f"{a_name} has {x} {things}. {b_name} has {d} more {things} than {a_name}. "
                f"How many {things} do they have together?")
    # Chain x -> x + d (B's count) -> B + x (the total); the second render puts A's count first.
    steps = [("+", d, lambda a, b, r: f"{b_name} has {a} + {b} = {r}."),
             ("+", x, lambda a, b, r: f"Together they have {b} + {a} = {r}.")]
    return question, f"{a_name} has {x}.", x, steps


def _finish(rng: random.Random, question: str, intro: str, start: int, steps: list) -> dict:
    values = _trace(start, steps)
    return {
        "question": question,
        "solution": _render(intro, start, steps, values),
        "answer": values[-1],
        "steps": len(steps),
        "incorrect_solution": _incorrect(rng, intro, start, steps),
    }


def make_problem(rng: random.Random) -> dict:
    """One random problem: question, step-by-step solution, integer answer, step count and a
    plausible incorrect solution (one slip, different final answer)."""
    if rng.random() < 0.2:
        return _finish(rng, *_two_people(rng))
    n_steps = rng.choice([1, 2, 2, 3, 3])
    question, intro, start, steps, _ = _single_person(rng, n_steps)
    return _finish(rng, question, intro, start, steps)


def make_multiturn(rng: random.Random) -> dict:
    """A one-person problem plus a follow-up turn that changes the count once more.

    Returns make_problem's keys plus ``followup_question``, ``followup_solution`` and
    ``followup_answer``.
    """
    n_steps = rng.choice([1, 2, 2])  # at most 2 here, so the whole chat stays < 200 tokens
    question, intro, start, steps, fmt = _single_person(rng, n_steps)
    problem = _finish(rng, question, intro, start, steps)
    prev = problem["answer"]
    person = (fmt["Name"], fmt["s"], fmt["obj"], fmt["pos"])
    f_fmt, _, clauses, f_steps = _person_chain(rng, 1, person, fmt["things"], prev)
    text, own_subject = clauses[0]
    lead = text if own_subject else f"{f_fmt['Name']} {text}"
    ask = rng.choice([f"How many {f_fmt['things']} does {f_fmt['s']} have now?",
                      f"How many does {f_fmt['s']} have now?",
                      f"How many {f_fmt['things']} does {f_fmt['Name']} have after that?"])
    problem["followup_question"] = f"Then {lead}. {ask}"
    problem["followup_solution"] = _render(f"{f_fmt['Name']} had {prev}.", prev, f_steps,
                                           _trace(prev, f_steps))
    problem["followup_answer"] = _trace(prev, f_steps)[-1]
    return problem


_ANSWER_RE = re.compile(r"[Tt]he answer is\s*:?\s*\$?\s*(-?\d+)|\\boxed\{\s*(-?\d+)\s*\}")


def extract_answer(text: str) -> int | None:
    """The last "The answer is N" or "\\boxed{N}" in ``text`` as an int, else None."""
    matches = _ANSWER_RE.findall(text or "")
    if not matches:
        return None
    plain, boxed = matches[-1]
    return int(plain or boxed)


if __name__ == "__main__":  # show a few samples
    _rng = random.Random(0)
    for _ in range(6):
        _p = make_problem(_rng)
        print(_p["question"], "\n ->", _p["solution"], "\n xx", _p["incorrect_solution"], "\n")
    _m = make_multiturn(_rng)
    print(_m["question"], "\n ->", _m["solution"], "\n", _m["followup_question"], "\n ->",
          _m["followup_solution"])
