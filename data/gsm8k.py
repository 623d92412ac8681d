"""GSM8K (Cobbe et al., 2021): grade-school word problems whose final answers are numbers.

The official files are JSONL with fields `question` and `answer`: a worked solution with
calculator annotations like `<<16-3-4=9>>` and a last line `#### X` (X sometimes has thousands
commas).

    load(split)                 -> list[Problem]    split in {"train", "test"}
    extract_answer(text)        -> canonical number string ("1080", "-3", "0.5", "3/4") or None
    grade(completion, gold)     -> bool             numeric comparison, never raises

The canonical string lets callers (e.g. self-consistency voting) compare answers with ==: "18",
"18.0", "$18" and "18." all become "18". Model outputs are adversarial, so extraction is linear in
the text (_collapse_spaces) and texts over _MAX_TEXT characters have no answer.
"""
from __future__ import annotations

import os
import re
from fractions import Fraction
from pathlib import Path

from data import Problem, answer_from_text, read_jsonl

SPLITS = ("train", "test")
# the Hugging Face mirror stores parquet files, main/{split}-00000-of-00001.parquet
HF_REPO = "openai/gsm8k"
# longer digit runs are not answers; also keeps int() clear of Python's 4300-digit limit
_MAX_DIGITS = 100
# longer texts are no solution (solutions run to a few thousand); bounds the time
_MAX_TEXT = 200_000

# A number as people write it: optional sign and $, digits with optional thousands commas, decimals
# (or a bare ".5"), optional "/denominator". The sign must not follow a word character, so the dash
# in "5-3" or "pages 10-15" is no minus. Whitespace runs are collapsed first (_collapse_spaces): on
# raw text an attempt starts at each character of a run and \s* reads to the run's end, which is
# quadratic.
_NUMBER_RE = re.compile(
    r"(?:(?<![\w)\]])(?P<sign>[-−])\s*)?\$?\s*"
    r"(?P<num>(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)"
    r"(?:\s*/\s*(?P<den>\d+))?"
)
# calculator annotations: their content repeats the visible text
_CALC_RE = re.compile(r"<<[^<>]*>>")
_SPACE_RE = re.compile(r"\s+")


# -------------------------------------------------------------------------------------------------
# loading

def _default_dir() -> Path | None:
    """SHEPHERD_GSM8K_DIR, else the shared data folder next to the repo;
    None when neither exists."""
    env = os.environ.get("SHEPHERD_GSM8K_DIR")
    if env:
        return Path(env)
    shared = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gsm8k"
    return shared if shared.is_dir() else None


def _download(split: str) -> list[dict]:
    """Rows from the Hugging Face hub (needs network, huggingface_hub and pyarrow)."""
    try:
        import pyarrow.parquet as pq  # the hub only has parquet; check before downloading anything
    except ImportError:
        raise RuntimeError(
            "GSM8K was not found locally and the Hugging Face copy is parquet, which needs pyarrow "
            "(not installed). Download the official train.jsonl/test.jsonl from "
            "https://github.com/openai/grade-school-math and set SHEPHERD_GSM8K_DIR to their "
            "folder."
        ) from None
    from huggingface_hub import hf_hub_download

    file = hf_hub_download(HF_REPO, f"main/{split}-00000-of-00001.parquet", repo_type="dataset")
    return pq.read_table(file).to_pylist()


def load(split: str, path: str | os.PathLike | None = None) -> list[Problem]:
    """GSM8K problems; `path` is a JSONL file or a folder with {split}.jsonl
    (default: _default_dir())."""
    if split not in SPLITS:
        raise ValueError(f"unknown GSM8K split {split!r}; expected one of {SPLITS}")
    folder = Path(path) if path is not None else _default_dir()
    if folder is None:
        rows = _download(split)
    else:
        file = folder / f"{split}.jsonl" if folder.is_dir() else folder
        if not file.exists():
            raise FileNotFoundError(f"GSM8K file not found: {file}")
        rows = [row for _, row in read_jsonl(file, ("question", "answer"))]
    problems = []
    for i, row in enumerate(rows):
        gold = gold_from_solution(row["answer"])
        if gold is None:
            raise ValueError(f"GSM8K {split} row {i}: the answer has no '#### X' number")
        problems.append(Problem(f"gsm8k-{split}-{i}", row["question"], gold,
                                {"solution": row["answer"]}))
    return problems


def gold_from_solution(solution: str) -> str | None:
    """The canonical number after the official solution's '#### '."""
    i = solution.rfind("####")
    return _first_number(solution[i + 4:]) if i >= 0 else None


# -------------------------------------------------------------------------------------------------
# answers

def _canonical(value: Fraction) -> str:
    """One spelling per number: '18', '-3', '0.25' for finite decimals, else 'p/q'."""
    num, den = value.numerator, value.denominator
    if den == 1:
        return str(num)
    twos = fives = 0
    rest = den
    while rest % 2 == 0:
        rest, twos = rest // 2, twos + 1
    while rest % 5 == 0:
        rest, fives = rest // 5, fives + 1
    if rest != 1:  # not a finite decimal
        return f"{num}/{den}"
    places = max(twos, fives)  # den divides 10**places, so the decimal digits are an exact integer
    digits = str(abs(num) * 10**places // den).rjust(places + 1, "0")
    text = f"{digits[:-places]}.{digits[-places:]}".rstrip("0").rstrip(".")
    return "-" + text if num < 0 else text


def _to_fraction(sign: str, num: str, den: str) -> Fraction | None:
    num = num.replace(",", "")
    if len(num) > _MAX_DIGITS or len(den) > _MAX_DIGITS or (den and int(den) == 0):
        return None  # checked before any Fraction is made: a text may hold 10^5 such numbers
    value = Fraction(num) / int(den) if den else Fraction(num)
    return -value if sign else value


def _collapse_spaces(text: str) -> str:
    """Whitespace runs become one space, so that _NUMBER_RE scans the text in linear time.

    No number changes: whitespace is read only through \\s* and captured by no group, and the
    lookbehind sees a non-word character either way. A failed attempt then reads a few characters
    at most ("- $ .")."""
    return _SPACE_RE.sub(" ", text)


def _first_number(text: str) -> str | None:
    for m in _NUMBER_RE.finditer(_collapse_spaces(text)):
        value = _to_fraction(*m.groups(""))
        if value is not None:
            return _canonical(value)
    return None


def _last_number(text: str) -> str | None:
    # a Fraction for the last one only
    for groups in reversed(_NUMBER_RE.findall(_collapse_spaces(text))):
        value = _to_fraction(*groups)
        if value is not None:
            return _canonical(value)
    return None


def extract_answer(text: str) -> str | None:
    """The final number of a solution: after 'The answer is:', else after '####', else the last
    number. After a marker, its first number (units may follow); a marker with no number gives None,
    not an earlier result."""
    if not isinstance(text, str) or len(text) > _MAX_TEXT:
        return None
    text = _CALC_RE.sub("", text)
    stated = answer_from_text(text)
    if stated is not None:
        return _first_number(stated)
    i = text.rfind("####")
    if i >= 0:
        return _first_number(text[i + 4:])
    return _last_number(text)


def grade(completion_text: str, gold: str) -> bool:
    """Is the completion's final number equal to the gold number?
    False for anything unparsable."""
    try:
        pred = extract_answer(completion_text)
        target = extract_answer(gold)
        return pred is not None and target is not None and Fraction(pred) == Fraction(target)
    except (ValueError, ZeroDivisionError, TypeError, OverflowError):
        return False
