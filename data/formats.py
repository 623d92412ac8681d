"""Label files in and out: our `label` records, Math-Shepherd's released jsonl, TRL's stepwise
records. Readers check every field; a user's mistake is an InputError naming file:line: field."""
from __future__ import annotations

import fcntl
import json
import re
from dataclasses import dataclass
from pathlib import Path

import data


class InputError(Exception):
    """Bad input from the user: printed as one line (file, line, field) and exit code 2."""


# `label` writes its output record by record and keeps beside it a sidecar: its settings, the units
# finished so far (for the resume), a lock while it runs, and this line once it has finished.
FINISHED = '{"finished": true}'


def label_sidecar(path: str | Path) -> Path:
    path = Path(path)
    return path.parent / f".{path.name}.progress"


def check_finished(path: str | Path):
    """A label output whose run has not finished is refused: read, it would silently be a part of
    the labels (a run still writing, or one interrupted and never resumed)."""
    side = label_sidecar(path)
    try:
        f = open(side, "rb")
    except OSError:
        return  # not a label output, or one whose sidecar was removed: taken as it is
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"{path}: a label run is still writing it (its lock: {side}); "
                             f"wait for it to finish") from None
        lines = f.read().decode(errors="replace").splitlines()
    if not lines or lines[-1] != FINISHED:
        n = max(0, len(lines) - 1)
        raise InputError(f"{path}: the label run writing it stopped after {n} unit{'s' * (n != 1)}; "
                         f"rerun the same label command to finish it, or remove {side} to use the "
                         f"records written so far")


def read_input(path: str | Path) -> list[tuple[int, dict]]:
    """A user's JSONL file as data.read_jsonl reads it; bad JSON, an empty file or a label
    output whose run has not finished is an InputError."""
    check_finished(path)
    try:
        rows = data.read_jsonl(path)
    except OSError as e:  # no such file, a folder, no permission
        raise InputError(f"{path}: {e.strerror}; expected a JSONL file") from None
    except ValueError as e:
        raise InputError(str(e)) from None
    if not rows:
        raise InputError(f"{path}: no records (the file is empty)")
    return rows


@dataclass
class StepExample:
    """One solution to score or train on: full text (prompt + tagged steps), a label per step."""
    text: str
    labels: list[float]  # per step, in [0, 1] (hard labels are 0/1)
    outcome: float  # the final answer's correctness (ORM target)
    id: str = ""
    prompt_len: int = 0  # text[:prompt_len] is the prompt, the rest the solution


def _normalise_tags(text: str) -> str:
    # released data glues tags to the text ('is: 40ки'), but the tag token is ' ки':
    # add the space
    return re.sub(r"\s*" + data.STEP_TAG, " " + data.STEP_TAG, text)


def _kind(v) -> str:
    return "nothing" if v is None else type(v).__name__


def text_field(rec: dict, name: str, where: str) -> str:
    if not isinstance(rec.get(name), str):
        raise InputError(f"{where}: field {name!r}: expected a string, got {_kind(rec.get(name))}")
    return rec[name]


def steps_field(rec: dict, name: str, where: str) -> list[str]:
    v = rec.get(name)
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise InputError(f"{where}: field {name!r}: expected a list of step strings, "
                         f"got {_kind(v)}")
    if not [s for s in v if s.strip()]:
        raise InputError(f"{where}: field {name!r}: the solution has no steps")
    return [s.strip() for s in v]


def _labels(rec: dict, name: str, where: str, n: int) -> list[float]:
    v = rec.get(name)
    if not isinstance(v, list) or not all(
            isinstance(x, (bool, int, float)) and 0 <= x <= 1 for x in v):
        raise InputError(f"{where}: field {name!r}: expected a list of labels in [0, 1] "
                         f"(booleans or numbers)")
    if len(v) != n:
        raise InputError(f"{where}: field {name!r}: {len(v)} labels for {n} steps")
    return [float(x) for x in v]


@dataclass
class Record:
    """One solution read from a file, whatever its format."""
    question: str
    steps: list[str]
    text: str  # what a reward model reads: the prompt, then the steps with their tags
    labels: list[float] | None  # per step, in [0, 1]; None when the record has none
    outcome: float | None  # the final answer's correctness (the ORM's target)
    gold: str | None
    id: str | None
    prompt_len: int = 0  # text[:prompt_len] is the prompt


def parse_solution(rec: dict, where: str, labels: str = "hard") -> Record:
    """Any of the three formats, told apart by their fields, every field type-checked:
    Math-Shepherd {'input': '... ки ... ки',
                   'label': the input with each ки replaced by + or -},
    TRL's stepwise {'prompt', 'completions': [step, ...], 'labels': [bool or float, ...]},
    and our `label` records {'question', 'steps', 'hard', 'soft', 'correct'}."""
    if "input" in rec:
        text = text_field(rec, "input", where)
        cut = re.search(r"\s*Step 1:", text)
        question = text[:cut.start()] if cut else text.split("\n", 1)[0]
        if data.STEP_TAG not in text[len(question):]:
            raise InputError(f"{where}: field 'input': no step tag {data.STEP_TAG!r}")
        steps, ys = data.split_steps(text[len(question):]), None
        if "label" in rec:  # the input with each tag replaced by + or -: walk both in step
            label, ys, pos = text_field(rec, "label", where), [], 0
            for k, part in enumerate(text.split(data.STEP_TAG)[:-1]):
                if label[pos:pos + len(part)] != part or \
                        label[pos + len(part):pos + len(part) + 1] not in ("+", "-"):
                    raise InputError(f"{where}: field 'label' is not field 'input' with step "
                                     f"{k + 1}'s tag replaced by + or -")
                pos += len(part)
                ys.append(1.0 if label[pos] == "+" else 0.0)
                pos += 1
            if label[pos:].rstrip() != text.split(data.STEP_TAG)[-1].rstrip():  # the rest, too
                raise InputError(f"{where}: field 'label' is not field 'input' with each tag "
                                 f"replaced by + or -: they differ after the last tag")
            ys = ys[question.count(data.STEP_TAG):]  # real questions can contain ки: no steps
            if len(ys) != len(steps):
                raise InputError(f"{where}: field 'input': {len(steps)} steps but {len(ys)} tags "
                                 f"after the question")
        text, outcome = question + _normalise_tags(text[len(question):]), None  # question verbatim
        prompt = question
    elif "prompt" in rec or "completions" in rec:
        question, steps = text_field(rec, "prompt", where), steps_field(rec, "completions", where)
        ys = _labels(rec, "labels", where, len(steps)) if "labels" in rec else None
        prompt = data.format_prompt(question)
        text, outcome = prompt + data.join_steps(steps), None
    elif "question" in rec or "steps" in rec:
        question, steps = text_field(rec, "question", where), steps_field(rec, "steps", where)
        ys = _labels(rec, labels, where, len(steps)) if labels in rec else None
        outcome = rec.get("correct")
        if outcome is not None and outcome not in (0, 1):  # True, False, 0, 1
            raise InputError(f"{where}: field 'correct': expected true or false, got {outcome!r}")
        prompt = data.format_prompt(question)
        text = prompt + data.join_steps(steps)
    else:
        raise InputError(f"{where}: expected fields input [+ label] (Math-Shepherd), prompt + "
                         f"completions [+ labels] (stepwise) or question + steps (label records)")
    key = "gold" if "gold" in rec else "answer"
    gold = rec.get(key)
    if gold is not None and (isinstance(gold, bool) or not isinstance(gold, (str, int, float))):
        raise InputError(f"{where}: field {key!r}: expected the final answer as a string or "
                         f"number, got {_kind(gold)}")
    rid = rec.get("id")
    if rid is not None and (isinstance(rid, bool) or not isinstance(rid, (str, int))):
        raise InputError(f"{where}: field 'id': expected a string or an integer, got {_kind(rid)}")
    return Record(question, steps, text, ys,
                  float(outcome) if outcome is not None else ys[-1] if ys else None,
                  None if gold is None else str(gold), None if rid is None else str(rid),
                  len(prompt))


def read_step_examples(path: str | Path, labels: str = "hard") -> list[StepExample]:
    """Labeled solutions (any format) for PRM/ORM training."""
    out = []
    for n, rec in read_input(path):
        where = f"{path}:{n}"
        r = parse_solution(rec, where, labels)
        if r.labels is None:
            raise InputError(f"{where}: no step labels "
                             f"(expected field 'label', 'labels' or {labels!r})")
        out.append(StepExample(r.text, r.labels, r.outcome, r.id or "", r.prompt_len))
    return out


RELEASED_TASK_NAMES = {"gsm8k": "GSM8K", "math": "MATH"}  # as the released data spells them


def export(records: list[dict], fmt: str, task_name: str, labels: str) -> str:
    """Math-Shepherd's jsonl (tags replaced by +/- in 'label') or TRL's stepwise records with
    `labels` (hard, soft or soft-threshold: see --export-labels)."""
    lines = []
    for r in records:
        # drop a stepwise input's own 'Step k:' prefixes
        steps = [re.sub(r"^\s*Step \d+:\s*", "", s) for s in r["steps"]]
        if fmt == "math-shepherd":
            body = [f"Step {i + 1}: {s} " for i, s in enumerate(steps)]
            mark = ["+" if y else "-" for y in r["hard"]]
            lines.append({
                "input": r["question"] + " " + "\n".join(b + data.STEP_TAG for b in body),
                "label": r["question"] + " " + "\n".join(b + m for b, m in zip(body, mark)),
                "task": RELEASED_TASK_NAMES.get(task_name, task_name),
                "gold": r["gold"]})  # gold: an extra field
        else:
            ys = {"hard": [bool(y) for y in r["hard"]], "soft": r["soft"],
                  "soft-threshold": [y >= 0.5 for y in r["soft"]]}[labels]
            lines.append({"prompt": r["question"], "completions": r["steps"], "labels": ys,
                          "gold": r["gold"]})
    return "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines)
