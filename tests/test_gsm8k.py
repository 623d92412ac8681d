"""GSM8K task: loading the official JSONL, answer extraction and numeric grading."""
import random
import time
from pathlib import Path

import pytest

from data import gsm8k
from data.gsm8k import extract_answer, grade

GSM8K_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gsm8k"
needs_data = pytest.mark.skipif(not (GSM8K_DIR / "test.jsonl").exists(),
                                reason="../shared/data/gsm8k is absent")

EQUAL = [  # (completion, gold)
    ("The answer is: 18 ки", "18"),
    ("The answer is: 18.0", "18"),
    ("The answer is: 18.00", "18"),
    ("The answer is: $18", "18"),
    ("The answer is: 18.", "18"),
    ("The answer is: 18 dollars per day.", "18"),
    ("The answer is: $1,000", "1000"),
    ("The answer is: 1000", "1,000"),
    ("The answer is: 1,450,000 ки", "1,450,000"),
    ("The answer is: -3", "-3"),
    ("The answer is: −3", "-3"),          # a Unicode minus
    ("The answer is: -$4.50", "-4.5"),
    ("The answer is: .5", "0.5"),
    ("The answer is: 3/4", "0.75"),
    ("The answer is: 25%", "25"),
    ("The answer is:40ки", "40"),          # no space after the colon or before the tag
    ("She makes 9 * 2 = $<<9*2=18>>18 every day.\n#### 18", "18"),
    ("so she pays 5 + 7 = 12 dollars in total.", "12"),   # no marker: the last number
    ("The answer is: 7 ки\nThe answer is: 12 ки", "12"),  # the last answer counts
]
NOT_EQUAL = [
    ("The answer is: 17", "18"),
    ("The answer is: 18.5", "18"),
    ("The answer is: -18", "18"),
    ("The answer is: 1,001", "1000"),
    ("The answer is: 100", "1,000"),
    ("The answer is: 3/4", "0.7"),
    ("The answer is: eighteen", "18"),    # a marker with no number is no answer
    ("The answer is: ", "18"),
    ("I computed 18 and then The answer is: unknown", "18"),
    ("18 - 2 = 16", "18"),
    ("", "18"),
    ("no numbers at all", "18"),
]


@pytest.mark.parametrize("completion,gold", EQUAL)
def test_equal(completion, gold):
    assert grade(completion, gold)


@pytest.mark.parametrize("completion,gold", NOT_EQUAL)
def test_not_equal(completion, gold):
    assert not grade(completion, gold)


def test_extract_answer_is_canonical():
    assert extract_answer("The answer is: $1,000.00.") == "1000"
    assert extract_answer("#### 2,125") == "2125"
    assert extract_answer("The answer is: -0.50") == "-0.5"
    assert extract_answer("The answer is: 2/6") == "1/3"
    assert extract_answer("pages 10-15") == "15"
    assert extract_answer("The answer is: 1,2345") == "1"           # not a thousands separator            # a dash between numbers is not a minus
    assert extract_answer("The answer is: x") is None
    assert extract_answer(None) is None


def test_garbage_never_raises():
    slow = "The answer is: 1" + " " * 100_000 + "2"        # quadratic for a naive backtracking regex
    for completion, gold in [(None, "1"), ("The answer is: 1", None), ("The answer is: 1/0", "1"),
                             ("9" * 100_000, "9"), (slow, "1"), ("1,2" * 50_000, "1"), (b"1", "1")]:
        start = time.perf_counter()
        assert grade(completion, gold) in (True, False)
        assert time.perf_counter() - start < 1.0


def test_long_whitespace_runs_are_fast():
    # the number pattern used to read every whitespace run once per character of it: quadratic
    for completion, gold, expected in [("\\boxed{5" + " " * 50_000 + "cm}", "5", True),
                                       ("The answer is: -" + " " * 50_000, "5", False),
                                       ("The answer is: -" + "\n" * 50_000 + "5", "-5", True),
                                       ("#### $" + "\t" * 50_000 + "1,000", "1000", True),
                                       ("3" + " " * 50_000 + "/" + " " * 50_000 + "4", "0.75", True),
                                       (" " * 100_000, "5", False)]:
        start = time.process_time()
        assert grade(completion, gold) is expected
        assert time.process_time() - start < 1.0


def test_collapsing_whitespace_finds_the_same_numbers():
    # the extractor collapses whitespace runs before matching; on short texts the pattern can run on the
    # raw text too, and must find the very same numbers
    pieces = [" ", "   ", "\t", "\n", "\xa0", "\u2003", "1", "07", "123", "1,000", ",", ".", "-", "−", "$",
              "/", "a", ")", "]", "%", "=", "ки", "9" * 120]
    rng = random.Random(0)
    for _ in range(20_000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        raw = gsm8k._NUMBER_RE.findall(text)
        assert gsm8k._NUMBER_RE.findall(gsm8k._collapse_spaces(text)) == raw, repr(text)


def test_malformed_jsonl(tmp_path):
    (tmp_path / "test.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n\n{"question": "q2"}\n')
    with pytest.raises(ValueError, match=r"test\.jsonl:3: missing or non-string field 'answer'"):
        gsm8k.load("test", path=tmp_path)
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: malformed JSON"):
        gsm8k.load("test", path=tmp_path / "bad.jsonl")
    (tmp_path / "nogold.jsonl").write_text('{"question": "q", "answer": "no final line"}\n')
    with pytest.raises(ValueError, match="####"):
        gsm8k.load("test", path=tmp_path / "nogold.jsonl")
    with pytest.raises(ValueError, match="split"):
        gsm8k.load("dev", path=tmp_path)


def test_env_var(tmp_path, monkeypatch):
    (tmp_path / "train.jsonl").write_text('{"question": "q", "answer": "1+1=<<1+1=2>>2\\n#### 2"}\n')
    monkeypatch.setenv("SHEPHERD_GSM8K_DIR", str(tmp_path))
    [p] = gsm8k.load("train")
    assert (p.id, p.question, p.answer) == ("gsm8k-train-0", "q", "2")


@needs_data
@pytest.mark.parametrize("split,count", [("test", 1319), ("train", 7473)])
def test_every_gold_grades_against_its_solution(split, count, monkeypatch):
    monkeypatch.delenv("SHEPHERD_GSM8K_DIR", raising=False)
    problems = gsm8k.load(split)
    assert len(problems) == count and problems[0].id == f"gsm8k-{split}-0"
    failed = []
    for p in problems:
        raw = p.meta["solution"].rsplit("####", 1)[1].strip()  # e.g. "1,080", as the file writes it
        ok = (grade(p.meta["solution"], p.answer)                # the official text, via '####'
              and grade(f"Step 1 ки\nThe answer is: {raw} ки", p.answer)
              and grade(f"The answer is: {p.answer}", raw)
              and not grade(f"The answer is: {p.answer}1", p.answer))
        if not ok:
            failed.append(p.id)
    assert not failed, f"{len(failed)} of {count} failed, e.g. {failed[:5]}"
    assert all("," not in p.answer for p in problems)  # golds are canonical


def test_hub_fallback_without_pyarrow_says_what_to_do(monkeypatch):
    monkeypatch.setattr(gsm8k, "_default_dir", lambda: None)
    monkeypatch.setitem(__import__("sys").modules, "pyarrow", None)  # makes `import pyarrow` fail
    with pytest.raises(RuntimeError, match="SHEPHERD_GSM8K_DIR"):
        gsm8k.load("test")
