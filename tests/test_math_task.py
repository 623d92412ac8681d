"""MATH task: loading MATH500, answer extraction, normalisation, the grader, and its time limit."""
import json
import time
from pathlib import Path

import pytest

from data import join_steps, math_task
from data.math_task import extract_answer, grade, is_equiv, normalize

MATH500 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "math500" / "test.jsonl"
needs_data = pytest.mark.skipif(not MATH500.exists(), reason="../shared/data/math500 is absent")

try:
    import sympy  # noqa: F401  (imported here so the timing test does not measure sympy's import)
    HAVE_SYMPY = True
except ImportError:
    HAVE_SYMPY = False

EQUIVALENT = [  # (prediction, gold)
    ("\\frac{1}{2}", "0.5"),
    ("\\dfrac{1}{2}", "\\frac12"),
    ("1/2", "\\tfrac{1}{2}"),
    ("\\frac{14}{3}", "14/3"),
    ("\\frac 34", "0.75"),
    ("\\frac9{19}", "\\frac{9}{19}"),
    ("-\\frac{3}{8}", "\\frac{-3}{8}"),
    ("1\\frac{4}{5}", "\\frac{9}{5}"),
    ("18", "18.0"),
    ("18.00", "\\$18"),
    ("10,080", "10080"),
    ("10,\\!080", "10080"),
    ("11,\\! 111,\\! 111,\\! 100", "11111111100"),
    (".35625", "0.35625"),
    ("90^\\circ", "90"),
    ("90^{\\circ}", "90 degrees"),
    ("10\\%", "10"),
    ("5.4 \\text{ cents}", "5.4"),
    ("15\\mbox{ cm}^2", "15"),
    ("\\text{Evelyn}", "evelyn"),
    ("\\text{(B)}", "B"),
    ("x=5", "5"),
    ("x \\in [-2,7]", "[-2, 7]"),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
    ("(-\\infty, 0]", "(-\\infty,0]"),
    ("(0,9) \\cup (9,36)", "(0, 9)\\cup(9, 36)"),
    ("1,-2", "-2, 1"),
    ("3, 5, 7", "7,3,5"),
    ("\\{1\\pm\\sqrt{5},-2\\}", "\\{-2, 1\\pm\\sqrt{5}\\}"),
    ("\\begin{pmatrix} 1/5 \\\\ -18/5 \\end{pmatrix}", "\\begin{pmatrix} \\frac{1}{5} \\\\ -3.6 \\end{pmatrix}"),
    ("11\\sqrt2", "11\\sqrt{2}"),
    ("4210_{5}", "4210_5"),
    ("6 - 5i", "6-5i"),
    ("y = 2x + 3", "2x+3"),
    ("\\boxed{42}", "42"),
    ("42.", "42"),
]
SYMBOLIC = [  # equivalent, but only sympy can see it
    ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}"),
    ("3+x^2", "x^2+3"),
    ("(a+5)(b+2)", "ab+2a+5b+10"),
    ("6+9i", "9i+6"),
    ("2\\sqrt{5}", "\\sqrt{20}"),
    ("x^8 + x^7 + x^6 + x^5 + x^4 + x^3 + x^2 + x + 1", "\\frac{x^9-1}{x-1}"),
    ("5x - 7y + 11z + 4 = 0", "-10x+14y-22z-8=0"),
    ("\\frac{11+9a}{20}", "\\frac{11}{20}+\\frac{9a}{20}"),
    ("\\cot x", "\\frac{\\cos x}{\\sin x}"),
]
NOT_EQUIVALENT = [
    ("\\frac{1}{2}", "\\frac{1}{3}"),
    ("5", "-5"),
    ("0.5", "0.05"),
    ("(1,2)", "(2,1)"),
    ("[1,2)", "(1,2)"),
    ("(1,2)", "1,2"),
    ("3\\sqrt{2}", "2\\sqrt{3}"),
    ("x^2+1", "x^2-1"),
    ("\\text{(A)}", "B"),
    ("6+9i", "6-9i"),
    ("2k+2", "2k"),
    ("\\pi", "3.14"),
    ("(-\\infty,0]", "(-\\infty,0)"),
    ("y = 2x + 3", "y = 3x + 2"),
    ("10,080", "10,081"),
    ("1,2,3", "1,2"),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix} 1 & 2 \\end{pmatrix}"),
    ("3R^2", "3r"),
    ("", "5"),
    ("\\text{east}", "\\text{west}"),
]
PATHOLOGICAL = [
    "9^9^9^9",
    "9^{9^{9^{9}}}",
    "2^{2^{2^{2^{2^{2^{2}}}}}}",
    "10^{10^{10}}",
    "9^{999999999}",
    "((9^{999})^{999})^{999}",
    "(x+1)^{999}",
    "\\frac{" * 5000 + "1" + "}" * 5000,
    "{" * 20000 + "}" * 20000,
    "\\sqrt{" * 3000 + "2" + "}" * 3000,
    "(" * 10000 + ")" * 10000,
    "1+" * 50000 + "1",
    "x" * 100_000,
    "9" * 100_000,
    ",".join(["1"] * 30000),
    "\\boxed{" * 20000,
    "The answer is: x" + " " * 100_000 + "y",
    "\\begin{pmatrix}" + "1&" * 30000 + "\\end{pmatrix}",
    "(" + ",".join(["x^{99}"] * 60) + ")",
    "(x+y+z)^{99}",                      # legal but slow for sympy: the time limit has to stop it
    "\\frac{x^{999}-1}{x-1}",
]


@pytest.mark.parametrize("pred,gold", EQUIVALENT)
def test_equivalent(pred, gold):
    assert is_equiv(pred, gold) and is_equiv(gold, pred)
    assert grade(f"Step ки\nThe answer is: {pred} ки", gold)


@pytest.mark.parametrize("pred,gold", EQUIVALENT)
def test_equivalent_without_sympy(monkeypatch, pred, gold):
    monkeypatch.setattr(math_task, "USE_SYMPY", False)  # the string rules alone decide all of these
    assert is_equiv(pred, gold)


@pytest.mark.skipif(not HAVE_SYMPY, reason="sympy not installed")
@pytest.mark.parametrize("pred,gold", SYMBOLIC)
def test_symbolic(monkeypatch, pred, gold):
    monkeypatch.setattr(math_task, "SYMPY_SECONDS", 10.0)  # correctness here, not speed: a busy machine is slow
    assert is_equiv(pred, gold)
    monkeypatch.setattr(math_task, "_sympy", False)  # as if sympy were not installed
    assert not is_equiv(pred, gold)


@pytest.mark.parametrize("pred,gold", NOT_EQUIVALENT)
def test_not_equivalent(pred, gold):
    assert not is_equiv(pred, gold) and not is_equiv(gold, pred)
    assert not grade(f"The answer is: {pred}", gold)


def test_extract_answer():
    assert extract_answer("so $x = \\boxed{\\frac{1}{2}}$. The answer is: \\frac12 ки") == "\\frac12"
    assert extract_answer("first \\boxed{1}, then \\boxed{\\{2, 3\\}}.") == "\\{2, 3\\}"
    assert extract_answer("then \\fbox{7}") == "7"
    assert extract_answer("$\\boxed 5$.") == "5"
    assert extract_answer("\\boxed{unclosed") is None
    assert extract_answer("no answer here, 42") is None
    assert extract_answer(None) is None


# Solutions as PRM800K writes them, steps one per line and the last ending "\n\n# Answer\n\n<answer>", or
# such steps in the project's step-tagged format (join_steps).
PRM800K_SOLUTIONS = [  # (solution, the answer its '# Answer' section states, an equal gold, a different gold)
    ("I want to find the largest positive integer that divides both $20 !$ and $200,\\!000$ evenly.\n"
     "So, the greatest common factor is $2^9\\cdot 5^4 = 512\\cdot 625 = 320,\\!000$.\n\n# Answer\n\n320,000",
     "320,000", "320,\\!000", "40,\\!000"),   # first and last steps of the labeled example in PRM800K's README
    (join_steps(["Two flips give four equally likely outcomes, and only TT has no head.",
                 "So the probability of at least one head is $1 - \\frac{1}{4} = \\frac{3}{4}$.",
                 "# Answer\n\n\\frac{3}{4}"]),
     "\\frac{3}{4}", "0.75", "\\frac{4}{3}"),
    (join_steps(["Substituting $y = 2x$ into $x + y = 3$ gives $3x = 3$, so $x = 1$.",
                 "Then $y = 2$, and the lines meet at $(1, 2)$.",
                 "# Answer\n\n(1,2)"]),
     "(1,2)", "(1, 2)", "(2,1)"),
    ("The first box holds $\\boxed{12}$ rows, but the question asks for all the seats.\n"
     "There are $12 \\cdot 39 = 468$ seats.\n\n# Answer\n\n468",
     "468", "468", "12"),                           # a box in an earlier step is not the answer
    ("The image of $\\mathbf{e}_1$ is the first column.\n\n# Answer\n\n"
     "\\begin{pmatrix} 1 \\\\\n 2 \\end{pmatrix}",  # an answer over two lines, no blank line between
     "\\begin{pmatrix} 1 \\\\\n 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}",
     "\\begin{pmatrix}2\\\\1\\end{pmatrix}"),
    ("So $x \\in [-2, 7)$.\n\n# Answer\n\n[-2,7)\n\nI checked both endpoints.",  # text after a blank line
     "[-2,7)", "[-2, 7)", "[-2,7]"),
]


@pytest.mark.parametrize("solution,answer,same,different", PRM800K_SOLUTIONS,
                         ids=["readme", "fraction", "pair", "earlier-box", "matrix", "interval"])
def test_prm800k_answer_section(solution, answer, same, different):
    assert extract_answer(solution) == answer
    assert grade(solution, same) and grade(solution, answer)
    assert not grade(solution, different)


def test_answer_section_precedence():
    assert extract_answer("# Answer\n\n5\nThe answer is: 6 ки") == "6"            # the project's marker first
    assert extract_answer("The answer is: 6 ки\n\n# Answer\n\n5") == "6"
    assert extract_answer("so $\\boxed{7}$.\n\n# Answer\n\n8") == "8"            # then the heading
    assert extract_answer("# Answer\n\n8\n\nthen $\\boxed{7}$") == "8"
    assert extract_answer("# Answer\n\n3\n\n# Answer\n\n4") == "4"              # the last heading
    assert extract_answer("# Answer\n\n  \\frac{3}{4}  ки\nStep 2 ки") == "\\frac{3}{4}"  # up to the tag
    assert extract_answer("   # Answer:\n\n9") == "9"
    assert extract_answer("so $\\boxed{7}$.\n\n# Answer\n\n") is None          # stated nothing: no fallback
    assert extract_answer("so $\\boxed{7}$ and # Answer 8") == "7"                # not a heading line
    assert extract_answer("so $\\boxed{7}$.\n# Answers\n\n8") == "7"
    assert math_task.answer_section("no heading here") is None


def test_grade_garbage_never_raises():
    for pred, gold in [(None, "5"), ("The answer is: 5", None), (b"bytes", "5"), ("The answer is: }{", "}{")]:
        assert grade(pred, gold) in (True, False)
    assert not grade("The answer is: \\frac{1}{0}", "\\frac{1}{0} + 1")


@pytest.mark.parametrize("use_sympy", [True, False])
def test_pathological_inputs_are_fast(monkeypatch, use_sympy):
    monkeypatch.setattr(math_task, "USE_SYMPY", use_sympy)
    for text in PATHOLOGICAL:
        for pred, gold in [(f"The answer is: {text}", text), (f"The answer is: {text}", "x^{999}+1"),
                           (text, f"\\boxed{{{text}}}")]:
            # CPU time of this process, so that other jobs on a busy machine do not make the test flaky
            start = time.process_time()
            grade(pred, gold)
            elapsed = time.process_time() - start
            assert elapsed < 1.0, f"{elapsed:.2f}s of CPU grading {pred[:40]!r} against {gold[:40]!r}"


@needs_data
def test_math500_golds_grade_against_themselves():
    problems = math_task.load("test")
    assert len(problems) == 500 and problems[0].id == "math-test-0"
    solutions = [json.loads(line)["answer"] for line in MATH500.read_text().splitlines()]
    failed = []
    for p, solution in zip(problems, solutions):
        ours = grade(f"Some step ки\nThe answer is: {p.answer} ки", p.answer)
        boxed = grade(f"So the answer is $\\boxed{{{p.answer}}}$.", p.answer)
        reference = is_equiv(math_task.last_boxed(solution) or "", p.answer)  # the solution's own \boxed
        if not (ours and boxed and reference and grade(solution, p.answer)):
            failed.append(p.answer)
    assert not failed, f"{len(failed)} of 500 golds failed: {failed[:10]}"


@needs_data
def test_math500_golds_distinguish_each_other():
    # a cheap sanity check against a grader that accepts too much: neighbours rarely share an answer
    golds = [p.answer for p in math_task.load("test")]
    same = sum(normalize(a) != normalize(b) and is_equiv(a, b) for a, b in zip(golds, golds[1:]))
    assert same == 0


def test_load_errors(tmp_path):
    bad = tmp_path / "test.jsonl"
    bad.write_text('{"question": "q", "answer": "The answer is: 1"}\n{"question": "q"}\n')
    with pytest.raises(ValueError, match=r"test\.jsonl:2.*'answer'"):
        math_task.load("test", path=tmp_path)
    with pytest.raises(ValueError, match="split"):
        math_task.load("train", path=tmp_path)
    good = tmp_path / "good.jsonl"
    good.write_text('{"question": "q", "answer": "so $\\\\boxed{7}$"}\n')
    assert math_task.load("test", path=good)[0].answer == "7"
    prm = tmp_path / "prm.jsonl"
    prm.write_text(json.dumps({"question": "q", "answer": "So it is $468$.\n\n# Answer\n\n468"}) + "\n")
    assert math_task.load("test", path=prm)[0].answer == "468"


def test_decimals_are_exact_and_labels_matter():
    assert not is_equiv("0.333333", "\\frac{1}{3}")
    assert is_equiv("x = 1, x = -2", "1, -2")
    assert not is_equiv("x = 3, y = 4", "x = 4, y = 3")


def test_other_threads_skip_sympy_but_still_grade():
    import threading

    results = {}
    worker = threading.Thread(target=lambda: results.update(
        plain=grade("The answer is: \\dfrac12", "0.5"),
        symbolic=grade("The answer is: 3+x^2", "x^2+3")))
    worker.start()
    worker.join()
    assert results == {"plain": True, "symbolic": False}  # no SIGALRM off the main thread: no sympy
