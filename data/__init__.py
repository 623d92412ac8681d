"""Tasks: problems plus the one function that decides whether a final answer is right.

A task module (data/synthetic.py, data/gsm8k.py, data/math_task.py) provides

    load(split)                 -> list[Problem]
    grade(completion, gold)     -> bool      (the single entry point every caller uses)
    extract_answer(text)        -> str | None
    SPLITS                      -> the split names load() accepts

and everything shares the Math-Shepherd solution format defined here: steps that each end with the
step tag " ки", the last one "The answer is: X ки".  Example (one step per line):

    3 * 4 = 12 ки
    12 - 5 = 7 ки
    The answer is: 7 ки

Label files (our records, Math-Shepherd's jsonl, TRL's stepwise records) are read and written by
data/formats.py.
"""
from __future__ import annotations

import importlib
import json
import re
from dataclasses import dataclass, field

# Math-Shepherd's step tag; with the Mistral tokenizer " ки" is one token (id 12902)
STEP_TAG = "ки"
ANSWER_PREFIX = "The answer is:"
TASKS = {"synthetic": "data.synthetic", "gsm8k": "data.gsm8k", "math": "data.math_task"}


@dataclass
class Problem:
    id: str
    question: str
    answer: str  # the gold final answer, as text
    # task-specific extras (e.g. the synthetic world's program)
    meta: dict = field(default_factory=dict)


def get_task(name: str):
    """The task module for a name in TASKS
    (imported lazily, so no task costs anything until used)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {sorted(TASKS)}")
    return importlib.import_module(TASKS[name])


def format_prompt(question: str) -> str:
    """What the policy sees before its solution: the question and a newline."""
    return question.strip() + "\n"


def join_steps(steps: list[str]) -> str:
    """Steps (without tags) -> solution text: every step ends with ' ки', one step per line."""
    return "\n".join(f"{s.strip()} {STEP_TAG}" for s in steps)


def split_steps(solution: str) -> list[str]:
    """Solution text -> its steps, without tags; the one splitter everyone uses. Tolerates real
    Math-Shepherd variants: a tag with no space before it ('is: 40ки'), 'Step k:' prefixes, text
    after the last tag."""
    parts = solution.split(STEP_TAG)
    steps = [re.sub(r"^\s*Step \d+:\s*", "", p).strip() for p in parts]
    return [s for s in steps if s]


def to_model_tag(text: str, tag: str) -> str:
    """Files and graders speak ' ки' (join_steps); a model trained with another tag (--tag) speaks
    its own: every step end's ' ки' becomes ' ' + tag, before encoding."""
    return text if tag == STEP_TAG else re.sub(f" {STEP_TAG}(?=\n|$)", lambda m: " " + tag, text)


def from_model_tag(text: str, tag: str) -> str:
    """Decoded model text -> Math-Shepherd's format: each `tag` (a step end, per
    model.tag_positions) becomes ки."""
    return text if tag == STEP_TAG else text.replace(tag, STEP_TAG)


def answer_from_text(text: str) -> str | None:
    """The text after the LAST 'The answer is:' up to the next step tag (or the end), or None.
    Plain string search, linear in the text: a grader must stay fast on any model output."""
    i = text.rfind(ANSWER_PREFIX)
    if i < 0:
        return None
    tail = text[i + len(ANSWER_PREFIX):]
    j = tail.find(STEP_TAG)
    return (tail if j < 0 else tail[:j]).strip()


def read_jsonl(path, fields: tuple[str, ...] = ()) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line, each of `fields` a string; a bad line raises
    ValueError naming the file, the line and the field."""
    rows = []
    with open(path, "rb") as f:  # bytes, decoded a line at a time: a bad byte names its line
        for lineno, raw in enumerate(f, 1):
            try:  # -sig: a leading byte-order mark (Windows editors write one) is not JSON's
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"{path}:{lineno}: not UTF-8 text") from None
            if not line.strip():
                continue
            try:  # ValueError: also an integer of over 4,300 digits
                row = json.loads(line)
            except (ValueError, RecursionError) as e:
                why = e.msg if isinstance(e, json.JSONDecodeError) else (
                    "nested too deeply" if isinstance(e, RecursionError) else str(e).split(";")[0])
                raise ValueError(f"{path}:{lineno}: malformed JSON ({why})") from None
            if "\\ud" in line.lower():  # an escaped lone surrogate is valid JSON, not text
                try:
                    json.dumps(row, ensure_ascii=False).encode("utf-8")
                except UnicodeEncodeError:
                    raise ValueError(f"{path}:{lineno}: a string holds an unpaired surrogate "
                                     f"(\\ud800-\\udfff); expected Unicode text") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, "
                                 f"got {type(row).__name__}")
            for name in fields:
                if not isinstance(row.get(name), str):
                    raise ValueError(f"{path}:{lineno}: missing or non-string field {name!r}")
            rows.append((lineno, row))
    return rows
