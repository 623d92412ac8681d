"""The synthetic world: tiny arithmetic word problems whose every step has a known truth.

Math-Shepherd labels a step by asking a completer "can you still reach the gold answer from here?";
to audit that on a laptop, this world makes the honest answer computable. Each problem is a story
generated from a seed,

    Tom has 3 boxes with 4 pencils in each. He gives 5 pencils to Ann.
    How many pencils does Tom have now?

backed by a *program*, a list of binary operations over the quantities in the text
(meta["ops"] = [["*", "q0", "q1"], ["-", "v0", "q2"]]: v0 = q0 * q1, v1 = v0 - q2).  The reference
solution writes one operation per step, in the shared Math-Shepherd format (data/__init__.py):

    3 * 4 = 12 ки
    12 - 5 = 7 ки
    The answer is: 7 ки

Problems take 2-6 operations (+, -, *, exact /) on small numbers; every value in a reference
solution is a whole number >= 2. Some sentences are distractors ("He also has 7 stamps.") and some
questions reuse a value ("Ann has 3 more pencils than Tom has now. How many do they have
together?"). `step_truth` decides for ANY written solution which steps are still on a path to the
gold answer: the PRM800K labels, free.

Small numbers make an imperfect policy "lucky" now and then (2 * 6 and 3 * 4 are both 12, a skipped
"+4" and "-4" cancel, a slip the next step ignores): correct answers with a false step, which an
outcome reward model cannot see and a process reward model should. Splits are decided by a hash of
the question, so never overlap.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path

from data import (ANSWER_PREFIX, STEP_TAG, Problem, answer_from_text, format_prompt, join_steps,
                  split_steps)

# the tiny policy, shipped in the repo
POLICY_DIR = str(Path(__file__).resolve().parent / "synthetic_policy")
# how it was made (deterministic on a given machine; a few minutes on 2 cores): the project's one
# training loop
POLICY_COMMAND = ("python shepherd.py train --objective sft --task synthetic --model scratch "
                  "--steps 1200 --batch-size 32 --lr 1e-3 --seed 0 --out data/synthetic_policy")
# the verifier base the reward models are fine-tuned from (bench/reproduce.py, ppo.py's default
# PRM): twice the policy's depth (8 layers), an LM head of its own, SFT-trained on 200k problems.
# Trained on one H200 GPU, whose time limit stopped the run after its step-3,000 checkpoint
# (143 s): that checkpoint ships (heldout loss 0.008, greedy test accuracy 0.935 vs the policy's
# 0.525; the earlier 4-layer base, 0.975, made reward models blind within a problem).
VERIFIER_DIR = str(Path(__file__).resolve().parent / "synthetic_verifier")
VERIFIER_COMMAND = ("python shepherd.py train --objective sft --task synthetic --model scratch "
                    "--scratch-size deep --untie --steps 8000 --batch-size 64 --lr 1e-3 "
                    "--warmup 200 --num-examples 200000 --heldout 0.01 --eval-every 1000 "
                    "--save-every 1000 --eval-problems 0 --seed 0 --out data/synthetic_verifier")
# the reward models fine-tuned from it (bench/reproduce.py's sizes, ppo.py's default PRM):
# Monte-Carlo labels of the policy's solutions (problems x solutions, N completions per step), then
# `steps` of `batch` (3 epochs) at `lr`. Table 1's earlier 400 problems and 300 steps leave any base
# blind within a problem (README: the verifier-capacity curve).
RM_RECIPE = {"problems": 2500, "solutions": 8, "completions": 4, "steps": 1875, "batch": 32,
             "lr": 3e-4}
SPLIT_SIZES = {"train": 20_000, "val": 500, "test": 500}
SPLITS = tuple(SPLIT_SIZES)

# -----------------------------------------------------------------------------
# the stories

NAMES = {"Tom": "he", "Ben": "he", "Sam": "he", "Max": "he", "Leo": "he",
         "Ann": "she", "Mia": "she", "Zoe": "she", "Lily": "she", "Emma": "she"}
ITEMS = ["apples", "pencils", "stickers", "marbles", "cookies", "cards", "coins", "shells",
         "stamps", "books"]
CONTAINERS = {"boxes": "box", "bags": "bag", "jars": "jar", "packs": "pack", "baskets": "basket"}
# every sentence the world can say; {P} is the pronoun at the start of a sentence, {p} inside one
TEMPLATES = {
    "start": "{N} has {a} {items}.",
    "start_mul": "{N} has {a} {boxes} with {b} {items} in each.",
    "distractor": "{P} also has {a} {others}.",
    "add": ["{P} buys {a} more {items}.", "{P} finds {a} more {items}.",
            "{P} gets {a} more {items}."],
    "add_mul": "{P} buys {a} more {boxes} with {b} {items} in each.",
    "sub": ["{P} gives {a} {items} to {O}.", "{P} loses {a} {items}.", "{P} sells {a} {items}."],
    "sub_mul": "{P} gives {a} {items} to each of {b} friends.",
    "mul": "Then {p} has {a} times as many {items} as before.",
    "div": "{P} splits them equally into {a} piles and keeps one pile.",
    "ask": "How many {items} does {N} have now?",
    "ask_more": "{O} has {a} more {items} than {N} has now. "
                "How many {items} do they have together?",
    "ask_fewer": "{O} has {a} fewer {items} than {N} has now. "
                 "How many {items} do they have together?",
    "ask_times": "{O} has {a} times as many {items} as {N} has now. "
                 "How many {items} do they have together?",
    "ask_each": "{P} puts them equally into {a} {boxes}. How many {items} are in each {box}?",
}
STEP_COUNTS = {2: 0.2, 3: 0.25, 4: 0.25, 5: 0.18, 6: 0.12}  # operations per problem -> probability
MAX_VALUE = 400  # keeps the arithmetic within reach of a tiny model


def _apply(sym: str, x: int, y: int) -> int | None:
    """x sym y over the integers; None for a division that is not exact."""
    if sym == "/":
        return x // y if y and x % y == 0 else None
    return x + y if sym == "+" else x - y if sym == "-" else x * y


class _Story:
    """Accumulates sentences, quantities (in order of appearance) and the program."""

    def __init__(self, rng: random.Random, words: dict):
        self.rng, self.words = rng, words
        self.sentences, self.quantities, self.ops, self.values = [], [], [], []

    def say(self, template: str | list, **numbers) -> list[str]:
        template = self.rng.choice(template) if isinstance(template, list) else template
        self.sentences.append(template.format(**self.words, **numbers))
        self.quantities += numbers.values()  # keyword order is the order in the sentence
        return [f"q{i}" for i in range(len(self.quantities) - len(numbers), len(self.quantities))]

    def value(self, ref: str) -> int:
        return (self.quantities if ref[0] == "q" else self.values)[int(ref[1:])]

    def op(self, sym: str, a: str, b: str) -> str:
        self.values.append(_apply(sym, self.value(a), self.value(b)))
        self.ops.append([sym, a, b])
        return f"v{len(self.values) - 1}"


def _event(s: _Story, kind: str, v: str) -> str | None:
    """Tell one event that changes the running amount v;
    the new amount's ref, or None if it can't."""
    r, x = s.rng, s.value(v)
    if kind == "add":
        return s.op("+", v, *s.say(TEMPLATES["add"], a=r.randint(2, 30)))
    if kind == "add_mul":
        return s.op("+", v, s.op("*", *s.say(TEMPLATES["add_mul"], a=r.randint(2, 9),
                                             b=r.randint(2, 9))))
    if kind == "sub" and x >= 4:
        return s.op("-", v, *s.say(TEMPLATES["sub"], a=r.randint(2, min(30, x - 2))))
    if kind == "sub_mul" and x >= 6:
        a = r.randint(2, min(9, (x - 2) // 2))
        return s.op("-", v, s.op("*", *s.say(TEMPLATES["sub_mul"], a=a,
                                             b=r.randint(2, min(9, (x - 2) // a)))))
    if kind == "mul" and 2 * x <= MAX_VALUE:
        return s.op("*", v, *s.say(TEMPLATES["mul"], a=r.randint(2, min(4, MAX_VALUE // x))))
    divisors = [k for k in range(2, 10) if x % k == 0 and x // k >= 2]
    if kind == "div" and divisors:
        return s.op("/", v, *s.say(TEMPLATES["div"], a=r.choice(divisors)))
    return None


def make_problem(rng: random.Random) -> Problem:
    """One problem from the stream rng (deterministic given rng's state); id is left empty."""
    while True:  # a question that can't be asked about the final amount: tell another story
        name, other = rng.sample(sorted(NAMES), 2)
        boxes = rng.choice(sorted(CONTAINERS))
        items, others = rng.sample(ITEMS, 2)
        words = dict(N=name, O=other, P=NAMES[name].capitalize(), p=NAMES[name], items=items,
                     others=others, boxes=boxes, box=CONTAINERS[boxes])
        s = _Story(rng, words)
        n_ops = rng.choices(list(STEP_COUNTS), weights=list(STEP_COUNTS.values()))[0]
        ask = rng.choice(["ask", "ask", "ask_more", "ask_fewer", "ask_times", "ask_each"])
        left = n_ops - {"ask": 0, "ask_each": 1}.get(ask, 2)
        if left >= 1 and rng.random() < 0.5:
            v, left = s.op("*", *s.say(TEMPLATES["start_mul"], a=rng.randint(2, 9),
                                       b=rng.randint(2, 9))), left - 1
        else:
            v = s.say(TEMPLATES["start"], a=rng.randint(2, 30))[0]
        if rng.random() < 0.2:
            s.say(TEMPLATES["distractor"], a=rng.randint(2, 30))
        while left > 0:
            kinds = (["add", "sub", "sub", "mul", "div"]
                     + (["add_mul", "sub_mul"] if left >= 2 else []))
            n_before = len(s.ops)
            # None: that event can't happen now, try another
            v = _event(s, rng.choice(kinds), v) or v
            left -= len(s.ops) - n_before
        x = s.value(v)
        if ask == "ask":
            s.say(TEMPLATES["ask"])
        elif ask == "ask_each":
            divisors = [k for k in range(2, 10) if x % k == 0 and x // k >= 2]
            if not divisors:
                continue
            v = s.op("/", v, *s.say(TEMPLATES["ask_each"], a=rng.choice(divisors)))
        else:  # a second person whose amount derives from the first one's: the value is used twice
            if ask == "ask_fewer" and x < 4:
                continue
            a = rng.randint(2, {"ask_more": 30, "ask_fewer": min(30, x - 2), "ask_times": 4}[ask])
            sym = {"ask_more": "+", "ask_fewer": "-", "ask_times": "*"}[ask]
            v = s.op("+", v, s.op(sym, v, *s.say(TEMPLATES[ask], a=a)))
        if not all(2 <= y <= MAX_VALUE for y in s.values):
            continue
        steps = [f"{s.value(a)} {sym} {s.value(b)} = {y}"
                 for (sym, a, b), y in zip(s.ops, s.values)]
        answer = str(s.values[-1])
        meta = {"solution": join_steps(steps + [f"{ANSWER_PREFIX} {answer}"]),
                "quantities": s.quantities, "ops": s.ops, "values": s.values}
        return Problem(id="", question=" ".join(s.sentences), answer=answer, meta=meta)


def split_of(question: str) -> str:
    """The split a question belongs to, a hash of its text: splits are disjoint by construction."""
    h = int.from_bytes(hashlib.blake2b(question.encode(), digest_size=8).digest(), "big") % 20
    return "test" if h == 0 else "val" if h == 1 else "train"


def load(split: str, n: int | None = None) -> list[Problem]:
    """The first n problems (default SPLIT_SIZES[split]) of a split; the same list every time."""
    if split not in SPLIT_SIZES:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_SIZES)}")
    n = SPLIT_SIZES[split] if n is None else n
    rng, seen, out = random.Random(f"shepherd-synthetic-{split}"), set(), []
    while len(out) < n:
        p = make_problem(rng)
        if split_of(p.question) == split and p.question not in seen:
            seen.add(p.question)
            p.id = f"syn-{split}-{len(out):06d}"
            out.append(p)
    return out


def sft_records(split: str = "train", n: int | None = None):
    """(prompt, reference solution) pairs for supervised fine-tuning of the tiny policy."""
    for p in load(split, n):
        yield {"prompt": format_prompt(p.question), "response": p.meta["solution"]}

# -----------------------------------------------------------------------------
# grading


_NUMBER = re.compile(r"\$?\s*(-?\d{1,3}(?:,\d{3})+|-?\d+)(?:\.0*)?\s*\.?")
# longer numbers are none of this world's; keeps int(), superlinear in the digits, off them
_MAX_DIGITS = 100


def extract_answer(text: str) -> str | None:
    """The final answer as a canonical integer string ('1,000.' -> '1000'), or None if there
    is none. Linear: string search, then one anchored match that backs off each of its runs at
    most once."""
    try:
        m = _NUMBER.fullmatch(answer_from_text(text) or "")
        digits = m[1].replace(",", "") if m else ""
        return str(int(digits)) if m and len(digits) <= _MAX_DIGITS else None
    except Exception:  # not text at all
        return None


def grade(completion_text: str, gold: str) -> bool:
    """Is the last 'The answer is: X' in the completion the gold integer? Never raises."""
    try:
        got = extract_answer(completion_text)
        target = str(gold).strip().replace(",", "")
        return got is not None and len(target) <= _MAX_DIGITS and int(got) == int(target)
    except Exception:
        return False

# -----------------------------------------------------------------------------
# exact step truth

_EQUATION = re.compile(r"\s*(\d+)\s*([-+*/])\s*(\d+)\s*=\s*(\d+)\s*\.?\s*")
_FAMILY = {"+": "+-", "-": "+-", "*": "*/", "/": "*/"}
ROOT = (-1, frozenset(), 1)  # the item "the whole answer has been derived"


def _tree(meta: dict) -> list:
    """The program as n-ary nodes: (family '+-' or '*/', [(sign, child)], [(parent node, slot)]).

    A sum absorbs the +/- operations under it (a - (b + c) -> {+a, -b, -c}) and a product the
    * and / ones (exponents +1 / -1), so regrouping is free. child is ('q', index) or ('n', node).
    A value the program uses twice stays one node with two parents: computed once, reused."""
    ops, nodes, built = meta["ops"], [], {}
    uses = {}
    for _, a, b in ops:
        uses[a], uses[b] = uses.get(a, 0) + 1, uses.get(b, 0) + 1

    def node(ref):
        if ref not in built:
            sym, a, b = ops[int(ref[1:])]
            built[ref] = nid = len(nodes)
            nodes.append((_FAMILY[sym], [], []))
            collect(nid, a, 1)
            collect(nid, b, 1 if sym in "+*" else -1)
        return built[ref]

    def collect(nid, ref, sign):
        family, slots, _ = nodes[nid]
        if ref[0] == "v" and uses[ref] == 1 and ops[int(ref[1:])][0] in family:  # absorb it
            sym, a, b = ops[int(ref[1:])]
            collect(nid, a, sign)
            collect(nid, b, sign if sym in "+*" else -sign)
        elif ref[0] == "q":
            slots.append((sign, ("q", int(ref[1:]))))
        else:
            child = node(ref)
            nodes[child][2].append((nid, len(slots)))
            slots.append((sign, ("n", child)))
    node(f"v{len(ops) - 1}")
    return nodes


def _derive(step: str, nodes: list, readings: set, value: dict, allow_repeats: bool) -> set:
    """The readings after an equation step, one per way it extends a reading by something new; an
    empty set means the step is false. A reading is the set of items derived so far; an item
    (node, slots, o) is a node's slots combined, worth o * (their signed sum) or (their product)^o.
    x + y and x * y join disjoint parts of one node of like orientation, x - y and x / y of
    opposite ones; a node finished with o = +1 becomes a slot of each of its parents."""
    m = _EQUATION.fullmatch(step)
    if not m or _apply(m[2], int(m[1]), int(m[3])) != int(m[4]):
        return set()
    x, sym, y, z = int(m[1]), m[2], int(m[3]), int(m[4])
    out = set()
    for reading in readings:
        for n1, s1, o1 in (i for i in reading
                           if value[i] == x and i != ROOT and sym in nodes[i[0]][0]):
            for n2, s2, o2 in (i for i in reading if value[i] == y and i[0] == n1):
                if s1 & s2 or (o1 == o2) != (sym in "+*"):
                    continue
                made = [(n1, s1 | s2, o1)]
                if len(s1 | s2) == len(nodes[n1][1]) and o1 == 1:  # the node is done
                    made = ([(p, frozenset([k]), nodes[p][1][k][0]) for p, k in nodes[n1][2]]
                            or [ROOT])
                if allow_repeats or not reading.issuperset(made):
                    value.update((i, z) for i in made)
                    out.add(reading.union(made))
    return out


def step_truth(problem: Problem, steps: list[str], allow_repeats: bool = False) -> list[bool]:
    """Exact PRM labels for any candidate solution (steps as data.split_steps returns them).

    A step is True iff every step before it is True and
      * it is one equation 'x op y = z' of natural numbers, op in + - * / (a sentence, a negative
        number or two operations is False), with the arithmetic right (division exact);
      * x and y are quantities of the question or values of earlier steps, and x op y is part of
        the computation up to commutativity and associativity: it joins two disjoint parts of one
        sum (of signed terms) or product (of factors and divisors) of the flattened program, in the
        right direction ('4 * 3' for '3 * 4', '3 + 5 = 8' then '20 - 8' for '20 - 3 - 5',
        independent steps in any order; not '(a - b) * k' distributed, and a value the question
        uses twice must be derived whole, then reused);
      * it derives something new: a repeated step is False (unless allow_repeats), and so is one
        computation standing in for two that coincide in value (2 * 6 = 12 for 3 * 4 as well);
    and 'The answer is: X' is True iff the steps before it are True, derived the whole answer, and
    X equals gold (a bare guess, however right, is False). A step is True if ANY reading of its
    numbers (which of two equal quantities it means) makes it right, given a reading under which
    all earlier steps are right. After a False step all are False (PRM800K labels stop at the first
    error), and nothing may follow the answer step."""
    if "ops" not in problem.meta:
        raise ValueError(f"{problem.id}: not a synthetic-world problem (no program in meta), "
                         f"so no step truth")
    nodes, quantities = _tree(problem.meta), problem.meta["quantities"]
    value = {(nid, frozenset([k]), sign): quantities[child[1]]
             for nid, (_, slots, _) in enumerate(nodes)
             for k, (sign, child) in enumerate(slots) if child[0] == "q"}
    readings, truth, ended = {frozenset(value)}, [], False
    for step in steps:
        if readings and not ended and answer_from_text(step) is not None:
            ended = True
            readings = (readings if any(ROOT in r for r in readings) and grade(step, problem.answer)
                        else set())
        elif readings and not ended:
            readings = _derive(step, nodes, readings, value, allow_repeats)
        else:
            readings = set()
        truth.append(bool(readings))
    return truth


def corrupt(problem: Problem, rng: random.Random) -> str:
    """A solution with one plausible error carried forward (a result off by a little, a wrong
    operand or operation, a skipped step), or a 'slip', a wrong result later steps ignore (small
    models do this: the commonest way to be right by luck). For tests and label audits, not for
    training."""
    q, ops = problem.meta["quantities"], problem.meta["ops"]
    for _ in range(20):  # retry slips that make a later division inexact or a value negative
        i = rng.randrange(len(ops))
        kind = rng.choice(["arith", "arith", "operand", "operand", "op", "skip", "slip"])
        values, steps = [], []
        for j, (sym, a, b) in enumerate(ops):
            x, y = [(q if r[0] == "q" else values)[int(r[1:])] for r in (a, b)]
            pool = [w for w in q + values if w not in (x, y)]
            if j == i and kind == "operand" and not pool:
                kind = "arith"  # no other number to confuse this one with
            if j == i and kind == "operand":
                x, y = (rng.choice(pool), y) if rng.random() < 0.5 else (x, rng.choice(pool))
            if j == i and kind == "op":
                sym = rng.choice([s for s in "+-*" if s != sym])
            z = written = None if None in (x, y) else _apply(sym, x, y)
            if z is not None and j == i and kind in ("arith", "slip"):
                written = max(0, z + rng.choice([-10, -2, -1, 1, 2, 10]))
            values.append(x if j == i and kind == "skip" else z if kind == "slip" else written)
            if j != i or kind != "skip":
                steps.append(f"{x} {sym} {y} = {written}")
        if all(v is not None and v >= 0 for v in values):
            break
    return join_steps(steps + [f"{ANSWER_PREFIX} {values[-1]}"])


def slip_pairs(problems: list[Problem], seed: int = 0) -> list[tuple[str, list[str], list[str]]]:
    """(question, reference steps up to a random non-final step k, the same with step k's result
    off by 1, 2 or 10): an arithmetic slip, the policy's commonest first error. A verifier that
    checks steps scores the first above the second; one that only knows the problem's difficulty
    cannot (verify's slip_auc)."""
    rng, pairs = random.Random(seed), []
    for p in problems:
        steps = split_steps(p.meta["solution"])
        k = rng.randrange(len(steps) - 1)
        lhs, z = steps[k].rsplit(" = ", 1)
        bad = str(max(0, int(z) + rng.choice([-10, -2, -1, 1, 2, 10])))
        if bad != z:
            pairs.append((p.question, steps[:k + 1], steps[:k] + [f"{lhs} = {bad}"]))
    return pairs


# -----------------------------------------------------------------------------
# the tokenizer: one token per word, digit, symbol and newline; a space is folded into what follows

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]  # ids 0..3, as in Mistral (plus a real pad)
# like Mistral's '▁ки', '▁+', '▁-'
TAG_TOKEN, GOOD_TOKEN, BAD_TOKEN = "▁" + STEP_TAG, "▁+", "▁-"
# a word, a symbol, a digit, a newline, a space
_PIECES = r"▁?\p{L}+|▁?[^\p{L}\p{N}\s▁]|\p{N}|\n|▁"


def _vocab() -> list[str]:
    """Every piece the world can write: specials, space, newline, digits, symbols and words
    (with and without a space before them)."""
    pronouns = set(NAMES.values())
    texts = [ANSWER_PREFIX, STEP_TAG, *NAMES, *pronouns, *(w.capitalize() for w in pronouns),
             *ITEMS, *CONTAINERS, *CONTAINERS.values()]
    for t in TEMPLATES.values():
        texts += [re.sub(r"\{\w+\}", " ", x) for x in (t if isinstance(t, list) else [t])]
    words = sorted({w for t in texts for w in re.findall(r"[^\W\d_]+", t)})
    symbols = list(".,:?!$'+-*/=()%")
    return (SPECIAL_TOKENS + ["▁", "\n"] + list("0123456789")
            + [p + s for s in symbols + words for p in ("", "▁")])


def build_tokenizer(out_dir: str | None = None):
    """The world's tokenizer (a tokenizers.Tokenizer);
    with out_dir, saved there Hugging Face style."""
    from tokenizers import (Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers,
                            processors)
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(_vocab())}, unk_token="<unk>"))
    tok.add_special_tokens(SPECIAL_TOKENS)
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(_PIECES), behavior="isolated")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse()])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])  # add_bos_token
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tok.save(str(out / "tokenizer.json"))
        special = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
        config = dict(special, tokenizer_class="PreTrainedTokenizerFast", add_bos_token=True,
                      add_eos_token=False, clean_up_tokenization_spaces=False,
                      model_max_length=512)
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
        (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return tok


def prm_token_ids(tok) -> tuple[int, int, int]:
    """(tag, good, bad) token ids for a tokenizers.Tokenizer or a Hugging Face tokenizer."""
    lookup = tok.token_to_id if hasattr(tok, "token_to_id") else tok.convert_tokens_to_ids
    return tuple(lookup(t) for t in (TAG_TOKEN, GOOD_TOKEN, BAD_TOKEN))
