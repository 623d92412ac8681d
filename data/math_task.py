"""MATH (Hendrycks et al., 2021) on the MATH500 test split of PRM800K: competition problems,
LaTeX answers.

    load("test")                -> list[Problem]    gold: the reference solution's final answer
    extract_answer(text)        -> raw answer text: after the last 'The answer is:', else in the
                                   last '# Answer' section (PRM800K), else in the last \\boxed{...}
    normalize(answer)           -> a canonical string (also a good key for self-consistency voting)
    grade(completion, gold)     -> bool

Equivalence is decided in three layers, cheapest first:
  1. string rules after the Hendrycks and PRM800K graders (\\dfrac -> \\frac, units, degrees,
     \\left/\\right, "x =", thousands commas, \\frac12, ...), then equal strings;
  2. structure: tuples, intervals (bracket types kept), sets, unions, matrices, lists, element by
     element; plain numbers (0.5, 1/2, \\frac{1}{2}, mixed 1\\frac{4}{5}) compared numerically;
  3. with sympy installed: a symbolic check of a small, whitelisted translation, under a hard time
     limit (SIGALRM: main thread only, other threads skip this layer).
Any input grades within about a second: extraction is linear, texts over _MAX_TEXT characters have
no answer, answers over _MAX_LEN characters are compared verbatim, and power towers never reach
sympy.

PRM800K's solutions (and TRL's prm800k rows) end "...so the sum is 468.\\n\\n# Answer\\n\\n468";
that section is read up to the next step tag or blank line. A \\boxed{} comes last because a box may
sit in any step. A marker with nothing after it gives None, not some earlier answer.
"""
from __future__ import annotations

import os
import re
import signal
import threading
import time
from fractions import Fraction
from pathlib import Path

from data import STEP_TAG, Problem, answer_from_text, read_jsonl

SPLITS = ("test",)
USE_SYMPY = True          # tests switch this off to check the string-only path
SYMPY_SECONDS = 0.5       # total symbolic time allowed per grade() call
_MAX_LEN = 1000           # longer "answers" are compared verbatim, no rules
_MAX_TEXT = 200_000       # no solution is longer; bounds the Python-level scans (\boxed's braces)
_MAX_ITEMS = 64           # longer lists are not answers we try to match element by element


def load(split: str = "test", path: str | os.PathLike | None = None) -> list[Problem]:
    """MATH500 problems; `path` is a JSONL file or a folder with {split}.jsonl."""
    if split not in SPLITS:
        raise ValueError(f"unknown MATH split {split!r}; expected one of {SPLITS}")
    if path is None:
        env = os.environ.get("SHEPHERD_MATH_DIR")
        path = (Path(env) if env
                else Path(__file__).resolve().parents[1].parent / "shared/data/math500")
    path = Path(path)
    file = path / f"{split}.jsonl" if path.is_dir() else path
    if not file.exists():
        raise FileNotFoundError(f"MATH500 file not found: {file} "
                                f"(set SHEPHERD_MATH_DIR to its folder)")
    problems = []
    for i, (_, row) in enumerate(read_jsonl(file, ("question", "answer"))):
        gold = extract_answer(row["answer"])
        if gold is None:
            raise ValueError(f"{file}: row {i} has no 'The answer is:', '# Answer' "
                             f"or \\boxed answer")
        problems.append(Problem(f"math-{split}-{i}", row["question"], gold,
                                {"solution": row["answer"]}))
    return problems


# -------------------------------------------------------------------------------------------------
# extraction

def _close(s: str, i: int) -> int:
    """Index of the brace closing the '{' at s[i], or -1."""
    depth = 0
    for j in range(i, len(s)):
        if s[j] == "{":
            depth += 1
        elif s[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    return -1


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} / \\fbox{...} (or '\\boxed X'), or None."""
    i = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if i < 0:
        return None
    j = i + (6 if text.startswith("\\boxed", i) else 5)
    k = j
    while k < len(text) and text[k] in " \t":
        k += 1
    if k < len(text) and text[k] == "{":
        end = _close(text, k)
        return text[k + 1:end].strip() if end > 0 else None
    if k > j:  # "\\boxed 5": the argument runs to the end of the math
        return re.split(r"[$\n]", text[k:], maxsplit=1)[0].strip() or None
    return None


# The greedy (?s).* makes one match find the LAST heading: it backs off one character at a time,
# and each try is O(1) except at a line start, where [ \t]* reads that line's indent once.
# Linear in all.
_ANSWER_SECTION_RE = re.compile(r"(?sm).*^[ \t]*# Answer\b:?")
_BLANK_LINE_RE = re.compile(r"\n[ \t]*\n")


def answer_section(text: str) -> str | None:
    """The text after the last '# Answer' heading (PRM800K) up to a step tag or blank line,
    or None."""
    m = _ANSWER_SECTION_RE.match(text)
    if m is None:
        return None
    tail = text[m.end():]
    j = tail.find(STEP_TAG)
    tail = (tail if j < 0 else tail[:j]).strip()
    return _BLANK_LINE_RE.split(tail, maxsplit=1)[0].strip()


def extract_answer(text: str) -> str | None:
    """The final answer's raw text: after 'The answer is:', else in '# Answer',
    else in \\boxed{}."""
    if not isinstance(text, str) or len(text) > _MAX_TEXT:
        return None
    answer = answer_from_text(text)
    if answer is None:
        answer = answer_section(text)
    if answer is None:
        answer = last_boxed(text)
    return answer or None


# -------------------------------------------------------------------------------------------------
# layer 1: string rules

_DROP_RE = re.compile(
    r"\\left(?![a-zA-Z])|\\right(?![a-zA-Z])|\\displaystyle"           # sizing
    r"|(?<!\\)\\(?:[!,;: ]|q?quad)|~"                                  # spacing
    r"|\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|°|\\%|%|\\\$|\$|\\[()]"  # degrees, %, $, \( \)
)
_TEXT_CMD_RE = re.compile(r"\\(?:mbox|textbf|textrm|textit|mathrm|mathbf|operatorname)\s*\{")
_UNIT_TEXT_RE = re.compile(r"(?<=\S)\s*\\text\{[^{}]*\}(?:\^\{?\d\}?)?\s*$")  # "5 \text{ cm}^2"
_UNITS = (r"units?|cm|mm|km|meters?|inch(?:es)?|feet|foot|ft|yards?|miles?|mph|degrees?|cents?"
          r"|dollars?|hours?|minutes?|seconds?|days?|weeks?|years?|percent")
_UNIT_WORD_RE = re.compile(rf"(?<=[\d}}])\s+(?:(?:square|sq\.?|cubic)\s+)?(?:{_UNITS})"
                           rf"(?:\^\{{?\d\}}?)?\.?$")
_LEADING_VAR_RE = re.compile(r"^(?:[a-zA-Z](?:_\{?\w+\}?)?|\\[a-zA-Z]+)"
                             r"\s*(?:=|\\in(?![a-zA-Z]))\s*(?=\S)")
_THOUSANDS_RE = re.compile(r"-?\d{1,3}(?:,\s*\d{3})+(?:\.\d+)?")
# LaTeX lets one-character arguments go without braces: \frac12, \frac{270}7, \sqrt2
_SHORTHAND = [
    (re.compile(r"\\frac([^{\\])([^{\\])"), r"\\frac{\1}{\2}"),
    (re.compile(r"\\frac(\{[^{}]*\})([^{\\])"), r"\\frac\1{\2}"),
    (re.compile(r"\\frac([^{\\])\{"), r"\\frac{\1}{"),
    (re.compile(r"\\sqrt([^{\[\\])"), r"\\sqrt{\1}"),
]


def normalize(answer: str) -> str:
    """A canonical spelling of a final answer; equal strings mean equal answers."""
    s = answer.strip()
    if len(s) > _MAX_LEN:
        return s
    boxed = last_boxed(s)
    s = boxed if boxed is not None else s
    s = _DROP_RE.sub(" ", s)
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = _TEXT_CMD_RE.sub(r"\\text{", s)
    s = _UNIT_TEXT_RE.sub("", s)                      # a \text{...} trailing a value is a unit
    s = re.sub(r"\\text\{([^{}]*)\}", r"\1", s)        # other text is the answer itself: unwrap it
    s = _UNIT_WORD_RE.sub("", s.strip())
    s = s.strip().rstrip(".").strip()
    if s.count("=") <= 1:
        s = _LEADING_VAR_RE.sub("", s)                 # "x = 5" -> "5", "x \in [0,1]" -> "[0,1]"
    if _THOUSANDS_RE.fullmatch(s):
        s = re.sub(r",\s*", "", s)
    # drop whitespace, except that a command keeps one space before a letter ("\pi r" is not "\pir")
    s = re.sub(r"(\\(?!frac|sqrt)[a-zA-Z]+)\s+(?=[a-zA-Z])", "\\1\0", s)
    s = re.sub(r"\s+", "", s).replace("\0", " ")
    for pattern, repl in _SHORTHAND:
        s = pattern.sub(repl, s)
    s = re.sub(r"_\{(\w+)\}", r"_\1", s)               # 4210_{5} -> 4210_5
    s = re.sub(r"(?<!\d)\.(?=\d)", "0.", s)            # .35 -> 0.35
    # words and multiple-choice letters: "(B)" ~ "b"
    if re.fullmatch(r"\(?[a-zA-Z ]+\)?", s):
        s = s.strip("()").lower()
    return s


# -------------------------------------------------------------------------------------------------
# layer 2: structure and numbers

def _split_top(s: str, sep: str) -> list[str]:
    """Split at `sep` outside all brackets."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        c = s[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and s.startswith(sep, i):
            parts.append(s[start:i])
            start = i = i + len(sep)
            continue
        i += 1
    return parts + [s[start:]]


def _wrapped(s: str) -> bool:
    """Does the first bracket of s close at its last character (so '(a)(b)' is not wrapped)?"""
    depth = 0
    for i, c in enumerate(s):
        depth += (c in "([{") - (c in ")]}")
        if depth == 0:
            return i == len(s) - 1
    return False


def _structure(s: str) -> tuple[str, list[str]]:
    """(kind, items): kinds 'atom', 'matrix RxC', 'cup', 'set', 'list',
    or the bracket pair like '(]'."""
    m = re.fullmatch(r"\\begin\{([pbvB]?matrix)\}(.*)\\end\{\1\}", s, re.S)
    if m:
        rows = [r.split("&") for r in m.group(2).split("\\\\") if r.strip()]
        return (f"matrix {len(rows)}x{'/'.join(str(len(r)) for r in rows)}",
                [x for r in rows for x in r])
    if len(parts := _split_top(s, "\\cup")) > 1:
        return "cup", parts
    if s.startswith("\\{") and s.endswith("\\}"):
        return "set", _split_top(s[2:-2], ",")
    if s[:1] in ("(", "[") and s[-1:] in (")", "]") and _wrapped(s):
        if len(parts := _split_top(s[1:-1], ",")) > 1:
            return s[0] + s[-1], parts
    if len(parts := _split_top(s, ",")) > 1:
        return "list", parts                           # "1,-2": solutions, in any order
    return "atom", [s]


_NUM = r"\d+(?:\.\d*)?|\.\d+"
# 3, -0.5, 1/2, \frac{1}{2}, \frac{-3}{8}, and mixed numbers like 1\frac{4}{5}
_NUMBER_RE = re.compile(
    rf"(-?)(?:(\d+)?\\frac\{{(-?(?:{_NUM}))\}}\{{(-?(?:{_NUM}))\}}|({_NUM})(?:/({_NUM}))?)")


def _number(s: str) -> Fraction | None:
    """The exact value of a plain number, or None for anything else."""
    m = _NUMBER_RE.fullmatch(s) if len(s) <= 60 else None
    if m is None:
        return None
    sign, whole, frac_num, frac_den, num, den = m.groups()
    num, den = (frac_num, frac_den) if frac_num else (num, den or "1")
    if Fraction(den) == 0:
        return None
    value = Fraction(num) / Fraction(den) + int(whole or 0)
    return -value if sign else value


def _equal(a: str, b: str, deadline: float) -> bool:
    if a == b:
        return True
    (ka, xs), (kb, ys) = _structure(a), _structure(b)
    if ka == kb == "atom":
        na, nb = _number(a), _number(b)
        if na is not None and nb is not None:
            return na == nb                            # exact: 0.5 == 1/2, but 0.333 != 1/3
        return _symbolic_equal(a, b, deadline)
    if ka != kb or len(xs) != len(ys) or len(xs) > _MAX_ITEMS:
        return False
    if any("=" in x for x in xs) != any("=" in y for y in ys):  # "x=1, x=-2" vs "1,-2"
        xs, ys = [_LEADING_VAR_RE.sub("", x) for x in xs], [_LEADING_VAR_RE.sub("", y) for y in ys]
    if ka not in ("set", "list"):
        return all(_equal(x, y, deadline) for x, y in zip(xs, ys))
    unused = list(ys)                                  # unordered: match each element once
    for x in xs:
        hit = next((k for k, y in enumerate(unused) if _equal(x, y, deadline)), None)
        if hit is None:
            return False
        unused.pop(hit)
    return True


# -------------------------------------------------------------------------------------------------
# layer 3: sympy, guarded

_FUNCS = ("sqrt", "sin", "cos", "tan", "cot", "sec", "csc", "log", "exp")
_TOKEN_RE = re.compile(rf"\s*({_NUM}|{'|'.join(_FUNCS)}|pi|oo|[a-zA-Z]|\*\*|[-+*/()=])")
_INNERMOST = [  # rewritten innermost-first until no braces are left
    (re.compile(r"\\frac\{([^{}]*)\}\{([^{}]*)\}"), r"((\1)/(\2))"),
    (re.compile(r"\\sqrt\[([^\[\]{}]*)\]\{([^{}]*)\}"), r"((\2)**(1/(\1)))"),
    (re.compile(r"\\sqrt\{([^{}]*)\}"), r"sqrt(\1)"),
    (re.compile(r"\^\{([^{}]*)\}"), r"^(\1)"),
    # a bare group, not a command's argument
    (re.compile(r"(?<![a-zA-Z}\]])\{([^{}]*)\}"), r"(\1)"),
]


def _python_expr(s: str) -> str | None:
    """Translate a short LaTeX answer into a whitelisted Python expression string, or None."""
    if len(s) > 120 or "_" in s:
        return None
    s = (s.replace("\\cdot", "*").replace("\\times", "*").replace("\\infty", "oo")
         .replace("\\ln", "\\log"))
    for _ in range(40):
        before = s
        for pattern, repl in _INNERMOST:
            s = pattern.sub(repl, s)
        if s == before:
            break
    s = re.sub(rf"\\(pi|{'|'.join(_FUNCS)})(?![a-zA-Z])", r"\1", s).replace("^", "**")
    tokens, pos = [], 0
    for m in _TOKEN_RE.finditer(s):
        if m.start() != pos:
            return None                                # an unknown symbol or command: not for sympy
        tokens.append(m.group(1))
        pos = m.end()
    if pos != len(s.rstrip()) or tokens.count("=") > 1 or not _small_powers(tokens):
        return None
    wrapped = []  # "\\cot x" -> cot(x): a function without parentheses takes the next value
    for k, t in enumerate(tokens):
        wrapped += ["(", t, ")"] if k and tokens[k - 1] in _FUNCS and t[0].isalnum() else [t]
    out = []
    for t, nxt in zip(wrapped, wrapped[1:] + [""]):
        out.append("I" if t == "i" else t)
        value_end = t == ")" or t[0].isalnum() and t not in _FUNCS
        value_start = nxt == "(" or nxt[:1].isalnum() or nxt[:1] == "."
        if value_end and value_start:
            out.append("*")  # implicit multiplication: 2x, 3\sqrt{2}, (a)(b)
    return "".join(out)


def _small_powers(tokens: list[str]) -> bool:
    """Refuse huge numbers and towers of powers: Python's big-int power cannot be interrupted by a
    signal. A power weighs its exponent times its base's weight, so (9^30)^30 weighs 900."""
    if any(t[0].isdigit() and len(t) > 15 for t in tokens):
        return False
    inside = [1]  # the heaviest power inside each open parenthesis
    closed = 1    # the weight of the group that closed last
    for k, t in enumerate(tokens):
        if t == "(":
            inside.append(1)
        elif t == ")":
            if len(inside) < 2:
                return False
            closed = inside.pop()
            inside[-1] = max(inside[-1], closed)
        elif t == "**":
            j, depth, exponent = k + 1, 0, []
            while j < len(tokens):  # the exponent: one value or a parenthesised group
                depth += (tokens[j] == "(") - (tokens[j] == ")")
                exponent.append(tokens[j])
                j += 1
                if depth == 0 and tokens[j - 1] not in ("+", "-"):
                    break
            if "**" in exponent or (j < len(tokens) and tokens[j] == "**"):
                return False
            base = closed if k and tokens[k - 1] == ")" else 1
            weight = base * max([2] + [float(x) for x in exponent if x[0].isdigit()])
            if weight > 10_000:
                return False
            inside[-1] = max(inside[-1], weight)
    return True


# BaseException so that sympy's own `except Exception` cannot swallow it
class _Timeout(BaseException):
    pass


def _raise_timeout(signum, frame):
    raise _Timeout


def _run_with_limit(fn, seconds: float):
    """fn() with a hard time limit (SIGALRM); None when it runs out.
    Restores any timer the caller had."""
    old_handler = signal.signal(signal.SIGALRM, _raise_timeout)
    old_delay, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    start = time.monotonic()
    try:
        return fn()
    except _Timeout:
        return None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay:
            signal.setitimer(signal.ITIMER_REAL, max(old_delay - (time.monotonic() - start), 1e-3))


_sympy = None


def _get_sympy():
    """The sympy module, or None when it is missing or switched off
    (imported once, outside any alarm)."""
    global _sympy
    main = threading.current_thread() is threading.main_thread()
    if not USE_SYMPY or not main or not hasattr(signal, "setitimer"):
        return None
    if _sympy is None:
        try:
            import sympy
            _sympy = sympy
        except ImportError:
            _sympy = False
    return _sympy or None


def _symbolic_equal(a: str, b: str, deadline: float) -> bool:
    sympy = _get_sympy()
    pa, pb = _python_expr(a), _python_expr(b)
    left = deadline - time.monotonic()
    if sympy is None or pa is None or pb is None or left < 0.02 or ("=" in pa) != ("=" in pb):
        return False

    def check() -> bool:
        names = {c: sympy.Symbol(c) for c in set(re.findall(r"[a-zA-Z]", pa + pb))}
        names.update(I=sympy.I, pi=sympy.pi, oo=sympy.oo, **{f: getattr(sympy, f) for f in _FUNCS})
        ea, eb = (sympy.parse_expr("(%s)-(%s)" % tuple(p.split("=")) if "=" in p else p,
                                   local_dict=names)
                  for p in (pa, pb))
        if "=" in pa:  # equations: the same up to a nonzero factor
            ratio = sympy.simplify(ea / eb)
            return bool(ratio.is_number and ratio != 0 and ratio.is_finite)
        diff = sympy.simplify(ea - eb)
        if diff == 0:
            return True
        return bool(diff.is_number
                    and abs(complex(diff.evalf())) <= 1e-9 * max(1, abs(complex(eb.evalf()))))

    try:
        return bool(_run_with_limit(check, left))
    except Exception:  # sympy cannot parse or evaluate it: not provably equal
        return False


# -------------------------------------------------------------------------------------------------

def is_equiv(pred: str, gold: str) -> bool:
    """Do two final answers (raw text, e.g. from extract_answer) mean the same thing?"""
    a, b = normalize(pred), normalize(gold)
    if not (a and b):
        return False
    if len(pred.strip()) > _MAX_LEN or len(gold.strip()) > _MAX_LEN:
        return a == b  # normalize left them verbatim: no structure either
    return _equal(a, b, time.monotonic() + SYMPY_SECONDS)


def grade(completion_text: str, gold: str) -> bool:
    """Is the completion's final answer equivalent to the gold answer?
    False on anything unparsable."""
    try:
        pred = extract_answer(completion_text)
        target = extract_answer(gold) or gold  # gold may be a bare answer or a whole solution
        return pred is not None and isinstance(target, str) and is_equiv(pred, target)
    except (Exception, _Timeout):  # a timeout can land just after the limited call
        return False
