"""shepherd.py label: hard/soft estimation, forking, resume after SIGKILL, torchrun shards, formats, bad input."""
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import data
import label
import shepherd
from data import synthetic
from data.formats import FINISHED, InputError, export, read_input, read_step_examples
from model import Tokenizer, Transformer, tag_positions
from sampler import Completion, Sampler

ROOT = Path(__file__).resolve().parents[1]
POLICY = Path(synthetic.POLICY_DIR)
needs_policy = pytest.mark.skipif(not (POLICY / "config.json").exists(), reason="the tiny policy is not built")
FAST = ["--limit", "3", "--num-solutions", "2", "--num-completions", "4", "--max-new-tokens", "96", "--group", "1"]


def test_hard_and_soft_estimation_by_hand():
    # Math-Shepherd Eq. 3 / Eq. 4 with N = 4
    assert label.hard_label([False, True, False, False]) == 1
    assert label.soft_label([False, True, False, False]) == 0.25
    assert label.hard_label([False] * 4) == 0 and label.soft_label([False] * 4) == 0.0
    assert label.soft_label([True] * 4) == 1.0


class ScriptedCompleter:
    """Stands in for the sampler: the k-th step's completions end with scripted final answers."""

    def __init__(self, tok, script, tag=data.STEP_TAG):
        self.tok, self.script, self.calls, self.tag = tok, script, [], tag
        self.model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=512))

    def fork(self, seqs, forks, max_new_tokens, num_samples, **kw):
        self.calls.append(forks)
        out = []
        for k, _ in enumerate(forks):
            out.append([Completion(self.tok.encode(f"\nThe answer is: {a} {self.tag}", bos=False), [], [], "stop")
                        for a in self.script[k]])
        return out


@pytest.mark.parametrize("tag", [data.STEP_TAG, "<step>"])
def test_labels_from_a_scripted_completer(tmp_path, tag):
    """Also with a tag of the model's own (--tag <step>, an added token here): the solution, read in Math-Shepherd's
    format, is written with it for the completer, and the completions, written with it, are graded with ки in its
    place."""
    synthetic.build_tokenizer(tmp_path)
    tok = Tokenizer(tmp_path)
    if tag != data.STEP_TAG:
        tok.add_token(tag)
    problem = data.Problem("p0", "Tom has 3 boxes with 4 apples in each. He loses 5 apples. How many apples does he have now?",
                           "7", {"ops": [["*", "q0", "q1"], ["-", "v0", "q2"]], "quantities": [3, 4, 5]})
    sol = label.Solution(problem, 0, ["3 * 4 = 12", "12 - 5 = 8", "The answer is: 8"])
    labeler = label.Labeler.__new__(label.Labeler)
    labeler.args = SimpleNamespace(seed=0, num_completions=4, max_new_tokens=16, temperature=1.0, top_p=1.0)
    labeler.task, labeler.tok, labeler.head = synthetic, tok, shepherd.prm_head(tok, tag)
    labeler.comp = ScriptedCompleter(tok, [["7", "7", "9", "12"], ["8", "8", "8", "8"]], tag)
    labeler.stats = dict(problems=0, solutions=0, steps=0, rollouts=0, generated_tokens=0, prefill_tokens=0, skipped=0)
    [rec] = labeler.label([sol])
    assert rec["hard"] == [1, 0, 0]  # step 1: two of four reach 7; step 2: none; step 3: its own answer, 8, is wrong
    assert rec["soft"] == [0.5, 0.0, 0.0]
    assert rec["rollout_answers"] == [["7", "7", "9", "12"], ["8", "8", "8", "8"]]
    assert rec["truth"] == [1, 0, 0] and rec["correct"] is False
    # both rollout prefixes were forked from ONE sequence, ending right after each step's tag
    [forks] = labeler.comp.calls
    prompt_len = len(tok.encode(data.format_prompt(problem.question)))
    full = tok.encode(data.format_prompt(problem.question) + "\n".join(f"{s} {tag}" for s in sol.steps))
    [tag_id] = labeler.head.tag
    assert [t for _, t in forks] == [i + 1 for i, x in enumerate(full) if x == tag_id][:2]
    assert all(t > prompt_len for _, t in forks)


@needs_policy
def test_forked_prefixes_label_like_prefixes_run_from_scratch():
    """Greedy completer: one prefill per solution + forks == every prefix generated from scratch."""
    model = Transformer.from_pretrained(POLICY)
    tok = Tokenizer(POLICY)
    args = SimpleNamespace(seed=0, num_solutions=3, num_completions=1, max_new_tokens=96, temperature=0.0, top_p=1.0,
                           batch_size=16)
    lab = label.Labeler(args, synthetic, model, model, tok, shepherd.prm_head(tok, data.STEP_TAG))
    problems = synthetic.load("test")[:4]
    args.temperature = 0.7  # varied solutions ...
    sols = [s for p in problems for s in lab.sample_solutions([p])[p.id]]
    args.temperature = 0.0  # ... labeled by a greedy completer
    records = lab.label(sols)
    plain = Sampler(model, max_batch=4)
    checked = 0
    for sol, rec in zip(sols, records):
        prompt, resp = label.solution_tokens(tok, sol, lab.head)
        for k, end in enumerate(tag_positions(resp, lab.head.tag)[:-1]):
            prefix = prompt + resp[:end + 1]
            [c] = plain.generate([prefix], 96, temperature=0.0)
            text = tok.decode(resp[:end + 1] + c.tokens)
            assert rec["hard"][k] == int(synthetic.grade(text, sol.problem.answer))
            assert rec["rollout_answers"][k] == [synthetic.extract_answer(text)]
            checked += 1
    assert checked >= 8


def run_label(out, *extra, env=None):
    return subprocess.run([sys.executable, str(ROOT / "shepherd.py"), "label", "--out", str(out), *FAST, *extra],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)


@needs_policy
def test_sigkill_and_resume_give_the_same_bytes(tmp_path):
    whole = tmp_path / "whole.jsonl"
    r = run_label(whole, "--limit", "4")
    assert r.returncode == 0, r.stderr
    cut = tmp_path / "cut.jsonl"
    proc = subprocess.Popen([sys.executable, str(ROOT / "shepherd.py"), "label", "--out", str(cut), *FAST, "--limit", "4"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    side = tmp_path / ".cut.jsonl.progress"
    deadline = time.time() + 300
    while time.time() < deadline and not (side.exists() and side.read_text().count("\n") >= 2):  # settings + a unit
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = side.read_text().count("\n") - 1
    assert 1 <= done < 4, "the run was not killed in the middle"  # --group 1: a unit is one problem
    with pytest.raises(InputError, match=f"stopped after {done} units?;"):  # train would get a part
        read_input(cut)
    with open(cut, "ab") as f:  # and a torn half line, as a crash in mid-write would leave
        f.write(b'{"id": "syn-train-0')
    r = run_label(cut, "--limit", "4")
    assert r.returncode == 0, r.stderr
    assert f"{done} of 4 units of 1 already labeled" in r.stdout
    assert cut.read_bytes() == whole.read_bytes()
    assert len(whole.read_text().splitlines()) >= 4
    assert side.read_text().splitlines()[-1] == FINISHED and len(read_input(cut)) >= 4


def test_an_unfinished_label_output_is_refused(tmp_path, capsys):
    labels, side = tmp_path / "labels.jsonl", tmp_path / ".labels.jsonl.progress"
    labels.write_text(json.dumps({"question": "Tom has 3 apples. He buys 4 more. How many apples now?",
                                  "steps": ["3 + 4 = 7", "The answer is: 7"], "gold": "7", "hard": [1, 1],
                                  "soft": [1.0, 1.0], "correct": True}) + "\n")
    side.write_text('{"settings": {}}\n{"unit": "p", "end": %d}\n' % labels.stat().st_size)
    out = tmp_path / "prm"
    rc = shepherd.main(["train", "--objective", "prm", "--data", str(labels), "--out", str(out), "--steps", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"error: {labels}: the label run writing it stopped after 1 unit; rerun the same "
                               f"label command to finish it, or remove {side} to use the records written so far"]
    assert not out.exists()
    with open(side, "a") as f:  # a run holds the lock while it writes
        fcntl.flock(f, fcntl.LOCK_EX)
        with pytest.raises(InputError, match="a label run is still writing it"):
            read_input(labels)
        f.write(FINISHED + "\n")
    assert len(read_input(labels)) == 1
    side.unlink()  # without a sidecar a file is taken as it is
    assert len(read_input(labels)) == 1


@needs_policy
def test_torchrun_two_processes_equal_one(tmp_path):
    one = tmp_path / "one.jsonl"
    assert run_label(one, "--limit", "5", "--group", "2").returncode == 0  # units of 2, 2 and 1 problems
    two = tmp_path / "two.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
                        str(ROOT / "shepherd.py"), "label", "--out", str(two), *FAST, "--limit", "5", "--group", "2"],
                       cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert two.read_bytes() == one.read_bytes()
    assert (tmp_path / ".two.jsonl.progress").read_bytes() == (tmp_path / ".one.jsonl.progress").read_bytes()
    assert (tmp_path / ".two.jsonl.progress").read_text().splitlines()[-1] == FINISHED
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["one.jsonl", "two.jsonl", ".one.jsonl.progress",
                                                                 ".two.jsonl.progress", "one.quality.json",
                                                                 "two.quality.json"])


def test_export_formats_round_trip(tmp_path):
    recs = [{"id": "p/0", "problem_id": "p", "question": "Tom has 2 + 3 apples?", "gold": "5", "correct": True,
             "steps": ["2 + 3 = 5", "The answer is: 5"], "hard": [1, 1], "soft": [0.75, 1.0]},
            {"id": "q/1", "problem_id": "q", "question": "Ann - Ben?", "gold": "1", "correct": False,
             "steps": ["4 - 2 = 3", "3 - 1 = 2", "The answer is: 2"], "hard": [0, 0, 0], "soft": [0.0, 0.0, 0.0]}]
    for fmt, labels in (("math-shepherd", "hard"), ("stepwise", "hard"), ("stepwise", "soft")):
        path = tmp_path / f"{fmt}.jsonl"
        path.write_text(export(recs, fmt, "synthetic", labels))
        back = read_step_examples(path)
        assert [ex.labels for ex in back] == [[float(x) for x in r[labels]] for r in recs]
        sols = label.read_solutions(str(path), synthetic, False, {"skipped": 0})
        assert [p.question for p, _ in sols] == [r["question"] for r in recs]
        assert [sol.steps for _, [sol] in sols] == [r["steps"] for r in recs]
    trl = [json.loads(x) for x in export(recs, "stepwise", "synthetic", "soft-threshold").splitlines()]
    assert [x["labels"] for x in trl] == [[True, True], [False, False, False]]
    assert [[int(y) for y in x["labels"]] for x in trl] == [[1, 1], [0, 0, 0]]  # TRL's cast keeps them
    # a stepwise input whose completions carry their own 'Step k:' re-exports without doubling it
    prefixed = [{**recs[0], "steps": ["Step 1: 2 + 3 = 5", "Step 2: The answer is: 5"]}]
    ms = json.loads(export(prefixed, "math-shepherd", "gsm8k", "hard"))
    assert ms["input"] == "Tom has 2 + 3 apples? Step 1: 2 + 3 = 5 ки\nStep 2: The answer is: 5 ки" and ms["task"] == "GSM8K"
    assert json.loads((tmp_path / "math-shepherd.jsonl").read_text().splitlines()[1]) == {
        "input": "Ann - Ben? Step 1: 4 - 2 = 3 ки\nStep 2: 3 - 1 = 2 ки\nStep 3: The answer is: 2 ки",
        "label": "Ann - Ben? Step 1: 4 - 2 = 3 -\nStep 2: 3 - 1 = 2 -\nStep 3: The answer is: 2 -", "task": "synthetic",
        "gold": "1"}


def released_layout(row: dict) -> list[bool]:
    """How Math-Shepherd's released rows read, independently of shepherd.py: the k-th ки of 'input' is a + or - at the
    same place in 'label', shifted by one character per tag before it."""
    ys, i = [], row["input"].find("ки")
    while i >= 0:
        ys.append(row["label"][i - len(ys)] == "+")
        i = row["input"].find("ки", i + 2)
    return ys


def trl_stepwise(row: dict) -> list[tuple[str, int]]:
    """TRL's PRM trainer's reading of a stepwise row (../shared/REFERENCE.md): each completion is one step, followed by
    its separator, and its label goes through int(label)."""
    return [(c, int(y)) for c, y in zip(row["completions"], row["labels"])]


def test_exports_read_back_by_the_ecosystems_readers():
    recs = [{"id": "p/0", "problem_id": "p", "question": "Tom has 2 + 3 apples?", "gold": "5", "correct": True,
             "steps": ["Step 1: 2 + 3 = 5", "Step 2: The answer is: 5"], "hard": [1, 1], "soft": [0.75, 1.0]},
            {"id": "q/1", "problem_id": "q", "question": "Ann - Ben?", "gold": "1", "correct": False,
             "steps": ["4 - 2 = 3", "3 - 1 = 2", "The answer is: 2"], "hard": [1, 0, 0], "soft": [0.25, 0.0, 0.0]}]
    ms = [json.loads(x) for x in export(recs, "math-shepherd", "gsm8k", "hard").splitlines()]
    assert [released_layout(x) for x in ms] == [[bool(y) for y in r["hard"]] for r in recs]
    assert [x["input"].count("Step ") for x in ms] == [2, 3]  # one 'Step k:' per step, never doubled
    for labels, want in (("hard", [[1, 1], [1, 0, 0]]), ("soft-threshold", [[1, 1], [0, 0, 0]])):
        rows = [json.loads(x) for x in export(recs, "stepwise", "gsm8k", labels).splitlines()]
        # the steps as the records have them ('Step k:' kept, as trl-lib/math_shepherd keeps it), no tag inside
        assert [trl_stepwise(x) for x in rows] == [list(zip(r["steps"], w)) for r, w in zip(recs, want)]
        assert not any("ки" in c for x in rows for c in x["completions"])


def test_stepwise_export_read_by_trls_own_prm_trainer(tmp_path):
    """TRL's PRMTrainer.tokenize_row (TRL 0.x; TRL 1.x has no PRM trainer) reads our stepwise rows as we wrote them:
    each completion one step followed by the separator, its label at the step's last token."""
    try:
        from trl.trainer.prm_trainer import PRMTrainer
    except ImportError as e:
        pytest.skip(f"TRL's PRM trainer is not importable ({e}); tests/requirements.txt pins one that has it")
    from transformers import PreTrainedTokenizerFast
    from data import synthetic
    synthetic.build_tokenizer(tmp_path)
    hf = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    recs = [{"id": "q/1", "problem_id": "q", "question": "Tom has 4 - 2 apples?", "gold": "1", "correct": False,
             "steps": ["4 - 2 = 3", "3 - 1 = 2", "The answer is: 2"], "hard": [1, 0, 0], "soft": [0.5, 0.25, 0.0]}]
    for labels, want in (("hard", [1, 0, 0]), ("soft-threshold", [1, 0, 0]), ("soft", [0, 0, 0])):
        [row] = [json.loads(x) for x in export(recs, "stepwise", "synthetic", labels).splitlines()]
        out = PRMTrainer.tokenize_row(row, hf, "\n", None, None, None, False, False)
        at = [i for i, y in enumerate(out["labels"]) if y != -100]
        assert [out["labels"][i] for i in at] == want  # soft floats below 1 are cast to 0: why soft-threshold exists
        starts = [len(hf(row["prompt"], add_special_tokens=False)["input_ids"])] + [i + 1 for i in at[:-1]]
        assert [hf.decode(out["input_ids"][a:b + 1]) for a, b in zip(starts, at)] == [s + "\n" for s in recs[0]["steps"]]


def test_reads_the_real_math_shepherd_format(tmp_path):
    rows = [{"input": "Janet has 3 ducks. How many legs? Step 1: Each duck has 2 legs. ки\nStep 2: 3 * 2 = 6 ки\n"
                      "Step 3: The answer is: 6ки", "label": "Janet has 3 ducks. How many legs? Step 1: Each duck has 2 legs. +\n"
                      "Step 2: 3 * 2 = 6 +\nStep 3: The answer is: 6-", "task": "GSM8K", "gold": "6"}]
    path = tmp_path / "ms.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    [ex] = read_step_examples(path)
    assert ex.labels == [1.0, 1.0, 0.0] and ex.text.endswith("The answer is: 6 ки") and ex.text.count(" ки") == 3
    [(problem, [sol])] = label.read_solutions(str(path), synthetic, False, {"skipped": 0})
    assert problem.question == "Janet has 3 ducks. How many legs?" and problem.answer == "6"
    assert sol.steps == ["Each duck has 2 legs.", "3 * 2 = 6", "The answer is: 6"]
    # a ки inside the question (12 real rows have one) is no step: its label is dropped, as TRL's converter does
    q = "Compute 2ки3 in base 5."
    row = {"input": f"{q} Step 1: 2 + 3 = 5 ки\nStep 2: The answer is: 5 ки",
           "label": f"{q.replace('ки', '+')} Step 1: 2 + 3 = 5 +\nStep 2: The answer is: 5 -"}
    path.write_text(json.dumps(row) + "\n")
    [ex] = read_step_examples(path)
    assert ex.labels == [1.0, 0.0] and ex.text.startswith(q + " Step 1:") and ex.text.count(" ки") == 2
    assert released_layout(row)[1:] == [True, False]


def test_bad_input_is_one_line_with_file_line_and_field(tmp_path):
    cases = {
        '{"input": "Q Step 1: 1 + 1 = 2 ки", "label": "Q Step 1: 1 + 1 = 2 +"}\n{"input": ': "2: malformed JSON",
        '{"prompt": "Q", "completions": ["1 + 1 = 2"], "labels": [true]}\n': "1: field 'gold': no gold answer",
        '{"question": "Q", "steps": [], "gold": "2"}\n': "1: field 'steps': the solution has no steps",
        '{"foo": 1}\n': "1: expected fields input [+ label] (Math-Shepherd)",
        '{"question": "Q", "steps": ["1 + 1 = 2"], "gold": "2"}\n' + json.dumps(
            {"question": "Tom has 3 apples. " * 80, "steps": ["1 + 1 = 2"], "gold": "2"}) + "\n":
            "2: fields 'question' + steps: 490 tokens do not fit the completer's context (256)",
    }
    for i, (text, msg) in enumerate(cases.items()):
        path = tmp_path / f"bad{i}.jsonl"
        path.write_text(text)
        out = tmp_path / f"out{i}.jsonl"
        r = subprocess.run([sys.executable, str(ROOT / "shepherd.py"), "label", "--solutions", str(path), "--out", str(out)],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert r.returncode == 2, r.stderr
        assert f"{path}:{msg}" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not out.exists() and not list(tmp_path.glob(".out*"))
    stats = {"skipped": 0}
    good = tmp_path / "mixed.jsonl"
    good.write_text('{"question": "Q", "steps": ["1 + 1 = 2"], "gold": "2"}\n{"question": "Q2", "steps": []}\n')
    assert len(label.read_solutions(str(good), synthetic, True, stats)) == 1 and stats["skipped"] == 1


@pytest.mark.parametrize("argv,flag,want", [
    (["label", "--num-completions", "0"], "--num-completions", "expected >= 1, not 0"),
    (["label", "--num-solutions", "-2"], "--num-solutions", "expected >= 1, not -2"),
    (["label", "--limit", "-1"], "--limit", "expected >= 1, not -1"),
    (["label", "--batch-size", "0"], "--batch-size", "expected >= 1, not 0"),
    (["label", "--temperature", "-1"], "--temperature", "expected >= 0, not -1"),
    (["label", "--top-p", "0"], "--top-p", "expected > 0 and <= 1, not 0"),
    (["label", "--max-new-tokens", "nan"], "--max-new-tokens", "invalid int value: 'nan'"),
    (["train", "--heldout", "1.5"], "--heldout", "expected >= 0 and <= 1, not 1.5"),
    (["train", "--lr", "nan"], "--lr", "expected > 0, not nan"),
    (["train", "--steps", "0"], "--steps", "expected >= 1, not 0"),
    (["train", "--warmup", "-5"], "--warmup", "expected >= 0, not -5"),
    (["verify", "--num-samples", "0"], "--num-samples", "expected >= 1, not 0"),
    (["verify", "--temperature", "inf"], "--temperature", "expected >= 0, not inf"),
    (["verify", "--subsets", "0"], "--subsets", "expected >= 1, not 0"),
])
def test_argument_ranges_are_checked_before_anything_runs(tmp_path, capsys, argv, flag, want):
    with pytest.raises(SystemExit) as e:
        shepherd.main(argv + ["--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err == [f"error: argument {flag}: {want} (see shepherd.py {argv[0]} --help)"], err
    assert not any(tmp_path.iterdir())


MATH500 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "math500" / "test.jsonl"


@needs_policy
@pytest.mark.skipif(not MATH500.exists(), reason=f"{MATH500} is absent")
def test_label_reads_prm800k_rows(tmp_path):
    """TRL's prm800k rows: no gold field (the MATH problem with the same question gives it), and the solution ends
    with PRM800K's '# Answer\\n\\n<answer>': a right one is graded right, a wrong one wrong."""
    from data import math_task
    p = math_task.load("test")[0]
    rows = [{"prompt": p.question, "completions": ["We work it out.", f"# Answer\n\n{p.answer}"], "labels": [True, True]},
            {"prompt": p.question, "completions": ["We work it out.", "# Answer\n\n-12345"], "labels": [True, False]}]
    src, out = tmp_path / "prm800k.jsonl", tmp_path / "labels.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = run_label(out, "--task", "math", "--solutions", str(src), "--model", str(POLICY), "--num-completions", "1",
                  "--max-new-tokens", "8")
    assert r.returncode == 0, r.stderr[-2000:]
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(x["gold"], x["answer"], x["correct"], x["hard"][-1]) for x in recs] == [
        (p.answer, p.answer, True, 1), (p.answer, "-12345", False, 0)]


def test_a_line_separator_inside_a_record_stays_inside_it(tmp_path, capsys):
    """U+2028 is a line break to str.splitlines, not to JSON Lines: records written with it unescaped are read back
    whole (the report, the exports)."""
    q = "Tom has 3 apples.\u2028He buys 4 more apples. How many apples does Tom have now?"
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"question": q, "steps": ["3 + 4 = 7", "The answer is: 7"], "gold": "7"},
                              ensure_ascii=False) + "\n", encoding="utf-8")
    out = tmp_path / "l.jsonl"
    assert shepherd.main(["label", "--solutions", str(src), "--num-completions", "2", "--format", "stepwise",
                          "--out", str(out)]) == 0
    assert "\u2028" in out.read_text(encoding="utf-8")  # written as is, not escaped
    assert [r["question"] for _, r in data.read_jsonl(out)] == [q]
    assert [r["prompt"] for _, r in data.read_jsonl(out.with_suffix(".stepwise.jsonl"))] == [q]
    assert "(1 records)" in capsys.readouterr().out


def test_bench_label_quick_sets_defaults_that_flags_override(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import bench_label
    q = bench_label.parse_args(["--quick"])
    assert (q.problems, q.solutions_per_problem, q.num_completions, q.repeats) == (2, 2, 4, 1)
    q = bench_label.parse_args(["--quick", "--problems", "5", "--repeats", "3"])
    assert (q.problems, q.solutions_per_problem, q.num_completions, q.repeats) == (5, 2, 4, 3)
    assert bench_label.parse_args([]).problems == 8
