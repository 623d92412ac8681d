"""The synthetic world: generation, splits, grading, exact step truth and the tokenizer."""
import json
import random
import re

import pytest

from data import Problem, format_prompt, join_steps, split_steps
from data import synthetic as S
from data.synthetic import step_truth


def program(quantities, ops):
    """A hand-written problem: just the program (step_truth needs nothing else)."""
    values = []
    for sym, a, b in ops:
        x, y = [(quantities if r[0] == "q" else values)[int(r[1:])] for r in (a, b)]
        values.append(S._apply(sym, x, y))
    return Problem(id="hand", question="", answer=str(values[-1]), meta={"quantities": quantities, "ops": ops})


BOXES = program([3, 4, 5], [["*", "q0", "q1"], ["-", "v0", "q2"]])  # 3 boxes of 4, gives 5 away: 7
GIFTS = program([20, 3, 5], [["-", "q0", "q1"], ["-", "v0", "q2"]])  # 20 - 3 - 5 = 12
TWO_PRODUCTS = program([2, 6, 3, 4, 5], [["*", "q0", "q1"], ["*", "q2", "q3"], ["+", "v0", "v1"], ["-", "v2", "q4"]])
TOGETHER = program([5, 3], [["+", "q0", "q1"], ["+", "q0", "v0"]])  # 5 + (5 + 3) = 13
SHARED = program([10, 3, 4], [["-", "q0", "q1"], ["+", "v0", "q2"], ["+", "v0", "v1"]])  # 7 + (7 + 4) = 18
PILES = program([3, 4, 2], [["*", "q0", "q1"], ["/", "v0", "q2"]])  # 3 * 4 / 2 = 6
DOUBLE_TWO = program([2, 2, 5], [["*", "q0", "q1"], ["+", "v0", "q2"]])  # 2 * 2 + 5 = 9
CANCEL = program([10, 4, 4], [["+", "q0", "q1"], ["-", "v0", "q2"]])  # 10 + 4 - 4 = 10

T, F = True, False
CASES = [  # (problem, steps separated by '|', expected truth)
    # right, in the reference order or another valid one
    (BOXES, "3 * 4 = 12 | 12 - 5 = 7 | The answer is: 7", [T, T, T]),
    (BOXES, "4 * 3 = 12 | 12 - 5 = 7 | The answer is: 7", [T, T, T]),
    (BOXES, "4*3=12 | 12-5=7. | The answer is: 7.", [T, T, T]),
    (GIFTS, "3 + 5 = 8 | 20 - 8 = 12 | The answer is: 12", [T, T, T]),
    (GIFTS, "5 + 3 = 8 | 20 - 8 = 12 | The answer is: 12", [T, T, T]),
    (GIFTS, "20 - 5 = 15 | 15 - 3 = 12 | The answer is: 12", [T, T, T]),
    (TWO_PRODUCTS, "3 * 4 = 12 | 6 * 2 = 12 | 12 + 12 = 24 | 24 - 5 = 19 | The answer is: 19", [T] * 5),
    (TWO_PRODUCTS, "2 * 6 = 12 | 12 - 5 = 7 | 3 * 4 = 12 | 7 + 12 = 19 | The answer is: 19", [T] * 5),
    (TOGETHER, "5 + 3 = 8 | 5 + 8 = 13 | The answer is: 13", [T, T, T]),
    (TOGETHER, "5 + 5 = 10 | 10 + 3 = 13 | The answer is: 13", [T, T, T]),
    (SHARED, "10 - 3 = 7 | 7 + 4 = 11 | 7 + 11 = 18 | The answer is: 18", [T, T, T, T]),
    (SHARED, "10 - 3 = 7 | 7 + 7 = 14 | 14 + 4 = 18 | The answer is: 18", [T, T, T, T]),
    (PILES, "4 / 2 = 2 | 3 * 2 = 6 | The answer is: 6", [T, T, T]),
    (PILES, "3 * 4 = 12 | 12 / 2 = 6 | The answer is: 6", [T, T, T]),
    # wrong: arithmetic, operation, operand, direction, at different steps
    (BOXES, "3 * 4 = 13 | 13 - 5 = 8 | The answer is: 8", [F, F, F]),
    (BOXES, "3 + 4 = 7 | 7 - 5 = 2 | The answer is: 2", [F, F, F]),
    (BOXES, "3 * 4 = 12 | 12 + 5 = 17 | The answer is: 17", [T, F, F]),
    (BOXES, "3 * 5 = 15 | 15 - 4 = 11 | The answer is: 11", [F, F, F]),
    (BOXES, "3 * 4 = 12 | 12 - 5 = 7 | The answer is: 8", [T, T, F]),
    (GIFTS, "20 - 3 = 17 | 17 + 5 = 22 | The answer is: 22", [T, F, F]),
    (GIFTS, "3 - 5 = 2 | 20 - 2 = 18", [F, F]),
    (PILES, "3 * 4 = 12 | 12 / 3 = 4", [T, F]),
    (SHARED, "10 + 10 = 20 | 20 - 3 = 17", [F, F]),
    (TOGETHER, "5 + 3 = 8 | 8 + 3 = 11 | The answer is: 11", [T, F, F]),
    # not a step of this world, redundant, or after the end
    (BOXES, "Tom has 12 apples | 12 - 5 = 7 | The answer is: 7", [F, F, F]),
    (BOXES, "3 * 4 - 5 = 7 | The answer is: 7", [F, F]),
    (BOXES, "3 * 4 = 12 | 4 * 3 = 12 | 12 - 5 = 7 | The answer is: 7", [T, F, F, F]),
    (BOXES, "3 * 4 = 12 | 12 - 5 = 7 | The answer is: 7 | 7 + 0 = 7", [T, T, T, F]),
    (BOXES, "3 * 4 = 12 | 12 - 5 = 7 | The answer is: 7 | The answer is: 7", [T, T, T, F]),
    (BOXES, "3 * 4 = 12 | 12 - 5 = 7 | 12 - 5 = 7", [T, T, F]),
    (BOXES, "3 * 4 = 12 | 12 - 5 =", [T, F]),
    (BOXES, "", []),
    # lucky: the right final answer after a wrong step
    (BOXES, "3 * 4 = 13 | 12 - 5 = 7 | The answer is: 7", [F, F, F]),  # a slip the next step ignores
    (BOXES, "3 * 4 = 13 | 13 - 5 = 7 | The answer is: 7", [F, F, F]),  # two errors that cancel
    (TWO_PRODUCTS, "2 * 6 = 12 | 12 + 12 = 24 | 24 - 5 = 19 | The answer is: 19", [T, F, F, F]),  # 3 * 4 skipped
    (DOUBLE_TWO, "2 + 2 = 4 | 4 + 5 = 9 | The answer is: 9", [F, F, F]),  # wrong operation, same value
    (CANCEL, "The answer is: 10", [F]),  # a bare guess
    (CANCEL, "10 + 4 = 14 | The answer is: 10", [T, F]),  # stopped early, guessed right
]


@pytest.mark.parametrize("problem,text,expected", CASES)
def test_step_truth_hand_written(problem, text, expected):
    steps = [s.strip() for s in text.split("|")] if text else []
    assert step_truth(problem, steps) == expected
    # the same through the shared format
    assert step_truth(problem, split_steps(join_steps(steps))) == expected


def test_allow_repeats():
    steps = ["3 * 4 = 12", "4 * 3 = 12", "12 - 5 = 7", "The answer is: 7"]
    assert step_truth(BOXES, steps, allow_repeats=True) == [T, T, T, T]
    assert step_truth(BOXES, ["3 * 4 = 12", "3 * 5 = 15"], allow_repeats=True) == [T, F]


def test_lucky_solutions_grade_right_but_are_not_all_true():
    for problem, text, expected in CASES[-6:]:
        assert S.grade(join_steps(text.split("|")), problem.answer) and not any(expected[-1:])


def test_step_truth_never_raises_on_garbage():
    garbage = ["", "=", "3 / 0 = 0", "0 / 0 = 0", "The answer is: banana", "99999999999 * 9 = 1",
               "ки", "Step 1: 3 * 4 = 12", "-3 + 15 = 12", "3 * 4 = 12 = 12", "1e3 + 1 = 1001"]
    for step in garbage:
        assert step_truth(BOXES, [step]) in ([False], [True])
    assert step_truth(BOXES, ["3 / 0 = 0", "3 * 4 = 12"]) == [False, False]


@pytest.fixture(scope="module")
def problems():
    return S.load("test") + S.load("val") + S.load("train", 1000)


def test_references_are_right_and_consistent(problems):
    assert len(problems) == 2000
    for p in problems:
        steps = split_steps(p.meta["solution"])
        assert all(step_truth(p, steps)), (p.question, p.meta["solution"])
        assert S.grade(p.meta["solution"], p.answer)
        assert 3 <= len(steps) <= 7 and len(p.meta["ops"]) == len(steps) - 1
        assert [int(x) for x in re.findall(r"\d+", p.question)] == p.meta["quantities"]  # every number, in order
        assert all(2 <= v <= S.MAX_VALUE for v in p.meta["values"])
        json.dumps(p.meta)
    assert {len(p.meta["ops"]) for p in problems} == {2, 3, 4, 5, 6}


def test_corrupted_solutions_are_wrong_and_sometimes_lucky(problems):
    rng, lucky = random.Random(0), 0
    for p in problems[:1000]:
        sol = S.corrupt(p, rng)
        truth = step_truth(p, split_steps(sol))
        assert not all(truth)
        assert truth[-1] == (all(truth[:-1]) and S.grade(sol, p.answer))
        lucky += S.grade(sol, p.answer)
    assert 0 < lucky < 500


def test_generation_is_deterministic():
    a, b = S.load("test", 50), S.load("test", 50)
    assert [(p.id, p.question, p.answer, p.meta) for p in a] == [(p.id, p.question, p.answer, p.meta) for p in b]
    assert a[0].id == "syn-test-000000"
    assert S.make_problem(random.Random(7)) == S.make_problem(random.Random(7))
    assert S.make_problem(random.Random(7)) != S.make_problem(random.Random(8))
    assert [p.question for p in S.load("test", 20)] == [p.question for p in a[:20]]  # prefixes agree


def test_splits_are_disjoint(problems):
    train = S.load("train", 5000)
    test, val = S.load("test"), S.load("val")
    sets = [{p.question for p in ps} for ps in (train, test, val)]
    assert [len(s) for s in sets] == [5000, 500, 500]  # no duplicates inside a split either
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert all(S.split_of(p.question) == "test" for p in test)
    with pytest.raises(ValueError):
        S.load("dev")


GRADES = [
    ("The answer is: 7 ки", "7", True),
    ("3 * 4 = 12 ки\n12 - 5 = 7 ки\nThe answer is: 7 ки", "7", True),
    ("The answer is: 7", "7", True),
    ("The answer is: 7.", "7", True),
    ("The answer is: 7.0", "7", True),
    ("The answer is: 007", "7", True),
    ("The answer is: $1,000", "1000", True),
    ("The answer is: 7", "1,000", False),
    ("The answer is: 8 ки\nThe answer is: 7 ки", "7", True),  # the last one counts
    ("The answer is: 7 ки\nThe answer is: 8 ки", "7", False),
    ("The answer is: 8", "7", False),
    ("The answer is: 7.5", "7", False),
    ("The answer is: seven", "7", False),
    ("The answer is: 7 apples", "7", False),
    ("The answer is: -7", "7", False),
    ("The answer is: -7", "-7", True),
    ("3 * 4 = 12 ки\n12 - 5 = 7 ки", "7", False),  # no answer
    ("", "7", False),
    (None, "7", False),
    ("The answer is: 7", None, False),
    ("The answer is: 7", "garbage", False),
    (12, "12", False),
]


@pytest.mark.parametrize("text,gold,expected", GRADES)
def test_grade(text, gold, expected):
    assert S.grade(text, gold) is expected


def test_extract_answer():
    assert S.extract_answer("12 - 5 = 7 ки\nThe answer is: 7 ки") == "7"
    assert S.extract_answer("The answer is: 1,234") == "1234"
    assert S.extract_answer("no answer here") is None
    assert S.extract_answer("The answer is:") is None


def test_tokenizer(tmp_path, problems):
    tok = S.build_tokenizer(tmp_path)
    files = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
    assert {f.name for f in tmp_path.iterdir()} == files
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["add_bos_token"] and config["pad_token"] != config["eos_token"]
    assert [tok.token_to_id(t) for t in S.SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert tok.get_vocab_size() <= 400

    rng = random.Random(1)
    texts = [format_prompt(p.question) + p.meta["solution"] for p in problems]
    texts += [format_prompt(p.question) + S.corrupt(p, rng) for p in problems[:500]]
    for text, enc in zip(texts, tok.encode_batch(texts)):
        assert enc.ids[0] == tok.token_to_id("<s>") and tok.token_to_id("<unk>") not in enc.ids
        assert tok.decode(enc.ids) == text

    tag, good, bad = S.prm_token_ids(tok)
    assert len({tag, good, bad}) == 3 and None not in (tag, good, bad)
    assert tok.encode(" ки", add_special_tokens=False).ids == [tag]
    assert tok.encode(" +", add_special_tokens=False).ids == [good]
    assert tok.encode(" -", add_special_tokens=False).ids == [bad]
    assert tok.encode("1234", add_special_tokens=False).tokens == ["1", "2", "3", "4"]  # one token per digit
    assert "\n" in tok.encode("7 ки\n8", add_special_tokens=False).tokens
    # a PRM label text: each tag becomes ' +' or ' -', still one token each
    label = "3 * 4 = 12 +\n12 - 5 = 7 -"
    assert tok.encode(label, add_special_tokens=False).ids.count(good) == 1


def test_sft_records():
    records = list(S.sft_records("train", 3))
    first = S.load("train", 1)[0]
    assert records[0] == {"prompt": format_prompt(first.question), "response": first.meta["solution"]}
    assert len(records) == 3 and S.POLICY_DIR.endswith("data/synthetic_policy")
