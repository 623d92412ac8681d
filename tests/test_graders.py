"""Every task's grader on adversarial text: under a second of CPU per call, and still right where the
answer is well defined. Model outputs can be anything, so each string goes through grade() and
extract_answer() of every task, and is tried as a gold too."""
import signal
import threading
import time

import pytest

import data
from data import STEP_TAG

try:
    import sympy  # noqa: F401  (imported here so that no timed call pays for sympy's import)
except ImportError:
    pass

TASKS = sorted(data.TASKS)
CPU_LIMIT = 1.0     # seconds of CPU per grader call
WALL_GUARD = 30.0   # a call still running after this long fails at once instead of hanging the suite
N = 100_000
SPACES = " " * N
HALF = " " * (N // 2)  # for two runs in one text: the graders take texts of up to 200k characters


def every(value: bool) -> dict:
    return {task: value for task in TASKS}


def nested_set(n: int, last: int) -> str:
    """A set of n sets of n numbers, all alike but for the last element: the most matching work
    an answer of under 1000 characters asks of the MATH grader's unordered comparison."""
    inner = "\\{" + ",".join(str(j) for j in range(n - 1)) + f",{last}\\}}"
    return "\\{" + ",".join([inner] * n) + "\\}"


# (id, text, gold, {task: grade(text, gold)} for the tasks where the right grade is clear)
CASES = [
    ("spaces", SPACES, "5", every(False)),
    ("answer-after-spaces", "The answer is: " + SPACES + "5", "5", every(True)),
    ("spaces-after-answer", "The answer is: 5" + HALF + STEP_TAG + HALF, "5", every(True)),
    ("minus-then-spaces", "The answer is: -" + SPACES, "5", every(False)),
    ("minus-spaces-number", "The answer is: -" + SPACES + "5", "-5", {"gsm8k": True, "synthetic": False}),
    ("dollar-spaces-number", "The answer is: $" + SPACES + "5", "5", {"gsm8k": True, "synthetic": True}),
    ("boxed-spaces-unit", "\\boxed{5" + SPACES + "cm}", "5", {"gsm8k": True, "synthetic": False}),
    ("boxed-unclosed-spaces", "\\boxed{" + SPACES, "5", every(False)),
    ("hashes-spaces", "#### " + HALF + "-" + HALF + "5", "-5", {"gsm8k": True, "synthetic": False, "math": False}),
    ("slash-spaces", "5" + HALF + "/" + HALF + "x", "5", {"gsm8k": True, "synthetic": False, "math": False}),
    ("open-braces", "\\boxed" + "{" * N, "5", every(False)),
    ("deep-braces", "\\boxed" + "{" * (N // 2) + "5" + "}" * (N // 2), "5", {"gsm8k": True, "synthetic": False}),
    ("frac-tower", "The answer is: " + "\\frac{1}{" * 10_000 + "2" + "}" * 10_000, "5", every(False)),
    ("sqrt-tower", "The answer is: " + "\\sqrt{" * 15_000 + "2" + "}" * 15_000, "5", every(False)),
    ("power-tower", "The answer is: 10^{10^{10^{10}}}", "10^{10^{10^{10}}}", {"math": True, "synthetic": False}),
    ("power-towers-differ", "The answer is: 10^{10^{10^{10}}}", "10^{10^{10^{9}}}", {"math": False,
                                                                                    "synthetic": False}),
    ("python-power-tower", "The answer is: 9**9**9**9", "5", every(False)),
    ("caret-chain", "The answer is: " + "9^" * 30_000 + "9", "5", every(False)),
    ("huge-number", "The answer is: " + "9" * N, "5", every(False)),
    ("huge-number-bare", "9" * N, "5", every(False)),
    ("huge-number-then-answer", "9" * N + " ки\nThe answer is: 5 ки", "5", every(True)),
    ("huge-thousands", "The answer is: 1" + ",000" * 25_000, "5", every(False)),
    ("many-markers", "The answer is: " * 6_000 + "5", "5", every(True)),
    ("markers-without-answer", "The answer is:" * 7_000, "5", every(False)),
    ("tags", f" {STEP_TAG}" * 30_000, "5", every(False)),
    ("tags-after-answer", "The answer is: 5" + f" {STEP_TAG}" * 30_000, "5", every(True)),
    ("tags-before-answer", f"1 {STEP_TAG}\n" * 20_000 + f"The answer is: 5 {STEP_TAG}", "5", every(True)),
    ("unicode-minus-run", "The answer is: " + "−" * N + "5", "5", {"synthetic": False}),
    ("unicode-minus-answer", "The answer is: −5" + SPACES, "-5", {"gsm8k": True}),
    ("dollars", "The answer is: " + "$" * N + "5", "5", {"synthetic": False}),
    ("dollar-space-pairs", "$ " * (N // 2) + "x", "5", every(False)),
    ("commas", "The answer is: " + "," * N + "5", "5", {"synthetic": False}),
    ("dots", "The answer is: " + "." * N + "5", "5", {"synthetic": False}),
    ("comma-list", ",".join(["1"] * (N // 2)), "5", every(False)),
    ("decimal-points", "1." * (N // 2), "5", every(False)),
    ("zero-denominators", "1/0 " * (N // 4), "5", every(False)),
    ("minus-dollar", "-$" * (N // 2), "5", every(False)),
    ("minus-space", "- " * (N // 2) + "5", "-5", {"gsm8k": True, "synthetic": False, "math": False}),
    ("calculator-brackets", "<<" * (N // 2) + ">> The answer is: 5", "5", every(True)),
    ("calculator-unclosed", "<<" + "a" * N, "5", every(False)),
    ("answer-heading-spaces", "# Answer\n\n" + SPACES + "5", "5", {"gsm8k": True, "synthetic": False,
                                                                   "math": True}),
    ("answer-headings-empty", "# Answer\n" * 15_000, "5", every(False)),
    ("answer-headings-inline", "x# Answer" * 15_000, "5", every(False)),
    ("newlines", "\n" * (N // 2) + "# Answer" + "\n" * (N // 2), "5", every(False)),
    ("nested-sets", "The answer is: " + nested_set(16, 100), nested_set(16, 101), {"math": False,
                                                                                   "synthetic": False}),
    ("long-matrix", "The answer is: \\begin{pmatrix}" + "1&" * 30_000 + "\\end{pmatrix}", "5", every(False)),
    ("over-the-length-cap", "9 " * 500_000, "9", {"synthetic": False}),  # see test_texts_over_the_cap
]


class _Hung(BaseException):  # not an Exception, so that no grader's `except Exception` can swallow it
    pass


def _raise_hung(signum, frame):
    raise _Hung


def cpu_seconds(fn, *args):
    """(fn(*args), CPU seconds it took). In the main thread a wall-clock alarm stops a call that hangs
    (the re module checks for signals while matching), so a regression fails fast."""
    guard = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    if guard:
        old = signal.signal(signal.SIGALRM, _raise_hung)
        signal.setitimer(signal.ITIMER_REAL, WALL_GUARD)
    start = time.process_time()  # CPU time, so that other jobs on a busy machine do not make this flaky
    try:
        result = fn(*args)
    except _Hung:
        pytest.fail(f"still running after {WALL_GUARD:.0f}s of wall time")
    finally:
        if guard:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
    return result, time.process_time() - start


@pytest.fixture(scope="module", autouse=True)
def warm_graders():
    """Pay one-time costs (imports, sympy's first parse) before anything is timed."""
    for task in TASKS:
        data.get_task(task).grade("The answer is: x+1", "1+x")


def test_enough_cases():
    assert len(CASES) >= 20 and len({c[0] for c in CASES}) == len(CASES)
    assert all(set(expected) <= set(TASKS) for *_, expected in CASES)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("text,gold,expected", [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_every_grader_is_fast_and_right(task, text, gold, expected):
    module = data.get_task(task)
    calls = [("grade", module.grade, (text, gold)),
             ("extract_answer", module.extract_answer, (text,)),
             ("grade with it as the gold", module.grade, (f"The answer is: {gold}", text))]
    for what, fn, args in calls:
        result, elapsed = cpu_seconds(fn, *args)
        assert elapsed < CPU_LIMIT, f"{task}.{what}: {elapsed:.2f}s of CPU on {text[:40]!r}..."
        if what == "grade" and task in expected:
            assert result is expected[task], f"{task}.grade({text[:40]!r}..., {gold[:20]!r})"


def test_texts_over_the_cap_have_no_answer():
    from data import gsm8k, math_task

    for module in (gsm8k, math_task):
        fits = "The answer is: 5" + " " * (module._MAX_TEXT - 16)
        assert module.extract_answer(fits) == "5"
        assert module.extract_answer(fits + " ") is None  # documented: no solution is that long
