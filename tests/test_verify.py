"""Verification: aggregations, votes and best-of-N on hand-made scores; scoring in the released PRM's layout."""
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

import shepherd
import verify
from model import PRMHead, Tokenizer, Transformer, step_scores

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mistral-7b-v0.1"


def test_aggregations():
    s = [0.9, 0.5, 0.8]
    assert verify.aggregate(s, "min") == 0.5
    assert verify.aggregate(s, "prod") == pytest.approx(0.36)
    assert verify.aggregate(s, "last") == 0.8
    assert verify.aggregate([], "min") == 0.0
    with pytest.raises(ValueError):
        verify.aggregate(s, "mean")


def test_votes_ties_and_missing_answers():
    assert verify.majority_vote(["3", None, "4", None, None, "4"]) == ["4"]  # None never votes
    assert verify.majority_vote(["5", "3", "3", "5"]) == ["5", "3"]  # a tie: both, as first seen
    assert verify.majority_vote([None, None]) == [None]
    # best-of-N: the highest score's answer, even a missing one; tied solutions: each one's answer
    assert verify.best_of_n(["3", "4", None], [0.2, 0.9, 0.95]) == [None]
    assert verify.best_of_n(["3", "4", "3"], [0.7, 0.7, 0.7]) == ["3", "4", "3"]
    # SC+RM: argmax_a sum_i 1[a_i = a] RM_i: two weak votes for 3 (0.4 + 0.4) beat one strong 4 (0.7)
    assert verify.weighted_vote(["3", "4", "3", None], [0.4, 0.7, 0.4, 5.0]) == ["3"]
    assert verify.weighted_vote(["3", "4", "3"], [0.3, 0.7, 0.3]) == ["4"]
    assert verify.weighted_vote([None], [1.0]) == [None]


def test_method_choices_use_their_aggregation():
    answers = ["7", "8", "7"]
    prm = [[0.9, 0.2], [0.6, 0.6], [0.5, 0.95]]  # min: .2 .6 .5 -> "8"; prod: .18 .36 .475 -> "7"; last -> "7"(#3)
    orm = [[0.1], [0.2], [0.9]]
    c = verify.method_choices(answers, {"PRM": prm, "ORM": orm})
    assert c == {"SC": ["7"], "PRM-min": ["8"], "PRM-prod": ["7"], "PRM-last": ["7"], "SC+PRM": ["7"], "ORM": ["7"],
                 "SC+ORM": ["7"]}
    c = verify.method_choices(["1", "2"], {"PRM": [[0.9, 0.1], [0.3]]})
    assert c["PRM-min"] == ["2"] and c["PRM-last"] == ["2"] and c["PRM-prod"] == ["2"] and c["SC"] == ["1", "2"]


def test_best_of_n_curve_by_hand():
    # one problem, 4 solutions, 2 of them right; an oracle RM that scores right ones 1 and wrong ones 0
    p = {"answers": ["1", "2", "1", "3"], "correct": {"1": True, "2": False, "3": False},
         "scores": {"PRM": [[1.0], [0.0], [1.0], [0.0]]}}
    curve = verify.best_of_n_curve([p], [1, 2, 4], subsets=2000, seed=0)
    assert curve[4]["PRM-min"]["mean"] == 1.0 and curve[4]["SC"]["mean"] == 1.0 and curve[4]["PRM-min"]["std"] == 0
    assert curve[1]["SC"]["mean"] == pytest.approx(0.5, abs=0.04)  # one random solution: right half the time
    # N=2: the oracle fails only when both drawn are wrong: 1 of 6 pairs
    assert curve[2]["PRM-min"]["mean"] == pytest.approx(5 / 6, abs=0.04)
    # SC at N=2: a right-wrong pair ties and counts 1/2: P(right) = 1/6 + 4/6 * 1/2 = 1/2
    assert curve[2]["SC"]["mean"] == pytest.approx(0.5, abs=0.04)


def test_an_exact_tie_counts_as_its_expectation():
    # N = all solutions: one subset, so a tie broken by a coin would give 0 or 1; its expectation is exact
    p = {"answers": ["1", "2", "3", "1"], "correct": {"1": True, "2": False, "3": False},
         "scores": {"PRM": [[0.5], [0.5], [0.5], [0.1]], "ORM": [[0.5], [0.5], [0.25], [0.5]]}}
    q = {"answers": ["1", "2"], "correct": {"1": True, "2": False},  # one vote each, equal weights
         "scores": {"PRM": [[0.25], [0.25]], "ORM": [[0.25], [0.25]]}}
    for seed in range(5):
        c = verify.best_of_n_curve([p], [4], subsets=100, seed=seed)[4]
        assert c["PRM-min"]["mean"] == pytest.approx(1 / 3) and c["PRM-min"]["std"] == 0  # 1 of 3 tied is right
        assert c["ORM"]["mean"] == pytest.approx(2 / 3)  # solutions 1, 2, 4 tie: answers "1", "2", "1"
        assert c["SC"]["mean"] == 1.0 and c["SC+ORM"]["mean"] == 1.0  # "1": two votes, weight 1.0
        c = verify.best_of_n_curve([q], [2], subsets=100, seed=seed)[2]
        assert all(c[m]["mean"] == 0.5 for m in ("SC", "SC+PRM", "SC+ORM", "PRM-min", "ORM"))


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/data/mistral-7b-v0.1 is absent")
def test_scores_in_the_released_prm_layout(tmp_path):
    """A tiny MistralForCausalLM with the real Mistral tokenizer, saved the way peiyi9979/math-shepherd-mistral-7b-prm
    is published: our scores equal softmax over the logits of '+' (648) and '-' (387) at each 'ки' (12902)."""
    transformers = pytest.importorskip("transformers")
    cfg = json.loads((SHARED / "config.json").read_text())
    cfg.update(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    hf = transformers.MistralForCausalLM(transformers.MistralConfig(**cfg)).eval()
    hf.save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (tmp_path / name).write_bytes((SHARED / name).read_bytes())
    ours = Transformer.from_pretrained(tmp_path)
    tok = Tokenizer(tmp_path)
    head = PRMHead.from_tokenizer(tok)
    assert (head.tag, head.good_id, head.bad_id) == ((12902,), 648, 387)
    text = verify.rm_text("Janet has 3 ducks. How many legs?", ["3 * 2 = 6", "The answer is: 6"], "math-shepherd")
    assert text == "Janet has 3 ducks. How many legs? Step 1: 3 * 2 = 6 ки\nStep 2: The answer is: 6 ки"
    [got] = verify.score_solutions(ours, tok, head, [text])
    ids = torch.tensor([tok.encode(text)])
    with torch.no_grad():
        logits = hf(ids).logits[0]
    tags = (ids[0] == 12902).nonzero().flatten().tolist()
    want = [torch.softmax(logits[t, [648, 387]], -1)[0].item() for t in tags]
    assert len(got) == 2 and got == pytest.approx(want, abs=1e-5)
    assert step_scores(ours, ids, head)[0] == pytest.approx(want, abs=1e-5)


def problem(texts, right, scores):
    """One problem's solutions: texts, whether each is right, and one step-score list per solution."""
    answers = [f"a{t}" for t in texts]
    return {"answers": answers, "correct": dict(zip(answers, right)), "texts": texts, "scores": {"PRM": scores}}


def test_within_problem_auc_of_a_perfect_a_blind_and_an_inverted_verifier():
    # two problems; problem 1 is easy (3 of 4 right), problem 2 hard (1 of 4 right)
    right = [[True, True, True, False], [True, False, False, False]]
    texts = [["a", "a", "b", "c"], ["d", "e", "f", "g"]]

    def diag(score):
        pp = [problem(t, r, [[score(k, y)] for y in r]) for k, (t, r) in enumerate(zip(texts, right))]
        return verify.verifier_diagnostics(pp)["PRM"]
    perfect = diag(lambda k, y: 0.9 if y else 0.1)
    assert perfect["within_auc"] == 1.0 and perfect["pooled_auc"] == 1.0 and perfect["problems_with_both"] == 2
    inverted = diag(lambda k, y: 0.1 if y else 0.9)
    assert inverted["within_auc"] == 0.0 and inverted["pooled_auc"] == 0.0
    # blind within a problem: it only knows problem 1 is easy. Pooled it looks good; within, it is chance
    blind = diag(lambda k, y: 0.8 if k == 0 else 0.2)
    assert blind["within_auc"] == 0.5
    # pooled: positives .8 .8 .8 .2 vs negatives .8 .2 .2 .2: 9 pairs ordered, 6 ties (x 1/2), of 16: 0.75
    assert blind["pooled_auc"] == pytest.approx(0.75)


def test_step_auc_and_process_auc_read_the_truth():
    # solution 2 is right by luck: its answer is right but its first step is false; a PRM that sees it scores it low
    p = problem(["x", "y", "z"], [True, True, False], [[0.9, 0.8], [0.3, 0.7], [0.2, 0.1]])
    p["truth"] = [[True, True], [False, False], [False, False]]
    d = verify.verifier_diagnostics([p])["PRM"]
    # min scores .8 .3 .1; outcome-right {.8,.3} vs wrong {.1}: 1.0; process-right {.8} vs {.3,.1}: 1.0
    assert d["within_auc"] == 1.0 and d["within_auc_process"] == 1.0
    # steps: true {.9,.8} vs false {.3,.7,.2,.1}: 8 of 8 pairs ordered
    assert d["step_auc"] == 1.0
    p["scores"]["PRM"][1] = [0.95, 0.95]  # now the lucky solution outscores everything
    d = verify.verifier_diagnostics([p])["PRM"]
    assert d["within_auc"] == 1.0 and d["within_auc_process"] == 0.5  # {.8} vs {.95,.1}
    assert d["step_auc"] == pytest.approx(4 / 8)  # .9 and .8 each beat .2, .1 only


def test_the_blind_baseline_is_a_random_distinct_text():
    # the right text is written 3 times, the wrong ones once each: 3 of 6 solutions right, 1 of 4 texts
    texts, right = ["r", "r", "r", "w1", "w2", "w3"], [True, True, True, False, False, False]
    assert verify.blind_choice(texts, right) == 0.25
    p = problem(texts, right, [[0.5]] * 6)
    curve = verify.best_of_n_curve([p], [1, 6], subsets=4000, seed=0)
    assert curve[6]["blind"]["mean"] == 0.25 and curve[6]["blind"]["std"] == 0.0
    assert curve[1]["blind"]["mean"] == pytest.approx(0.5, abs=0.03)  # one solution: right half the time
    # the baseline is what a deterministic verifier with no signal does on average: random scores, one per text
    rng = torch.Generator().manual_seed(0)
    hits = []
    for _ in range(400):
        s = dict(zip(["r", "w1", "w2", "w3"], torch.rand(4, generator=rng).tolist()))
        q = problem(texts, right, [[s[t]] for t in texts])
        hits.append(verify.best_of_n_curve([q], [6], subsets=1, seed=0)[6]["PRM-min"]["mean"])
    assert sum(hits) / len(hits) == pytest.approx(0.25, abs=0.05)


def test_copies_of_a_text_are_scored_once(monkeypatch):
    calls = []
    import model as model_mod
    monkeypatch.setattr(model_mod, "step_scores", lambda m, ids, head: calls.append(ids.shape[0]) or
                        [[float(ids[b].ne(0).sum())] for b in range(ids.shape[0])])

    class Tok:
        pad_id, eos_id = 0, 1

        def encode(self, t):
            return [5] * len(t)

    class M(torch.nn.Module):
        config = type("C", (), {"max_position_embeddings": 100})()

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
    head = model_mod.PRMHead(9, 7, 8)
    got = verify.score_solutions(M(), Tok(), head, ["aaa", "b", "aaa", "aaa", "cc"], batch_size=8)
    assert got == [[3.0], [1.0], [3.0], [3.0], [2.0]] and calls == [3]


def test_slip_pairs_differ_in_one_result_only():
    import data
    from data import synthetic
    problems = synthetic.load("test")[:50]
    pairs = synthetic.slip_pairs(problems, seed=3)
    assert len(pairs) >= 45 and pairs == synthetic.slip_pairs(problems, seed=3)
    by_q = {p.question: p for p in problems}
    for q, right, slipped in pairs:
        p = by_q[q]
        assert right == data.split_steps(p.meta["solution"])[:len(right)] and len(right) < len(p.meta["ops"]) + 1
        assert slipped[:-1] == right[:-1] and slipped[-1].rsplit(" = ", 1)[0] == right[-1].rsplit(" = ", 1)[0]
        assert all(synthetic.step_truth(p, right)) and synthetic.step_truth(p, slipped)[-1] is False


def right_and_corrupted(path: Path):
    """The first 8 test problems' reference solutions and a corruption of each, as verify --solutions reads them."""
    import data
    from data import synthetic
    problems = synthetic.load("test")[:8]
    rng = __import__("random").Random(0)
    with open(path, "w") as f:
        for p in problems:
            for steps in (p.meta["solution"], synthetic.corrupt(p, rng)):
                f.write(json.dumps({"problem_id": p.id, "steps": data.split_steps(steps)}) + "\n")
    return problems


@pytest.mark.parametrize("inverted", [False, True])
def test_verify_reports_how_a_step_checker_sees_slips(tmp_path, monkeypatch, inverted):
    """verify with a stand-in reward model that checks every step against the exact truth (or says the opposite):
    slip AUC and within-problem AUC 1 (0 inverted)."""
    import data
    from data import synthetic
    problems = right_and_corrupted(tmp_path / "sols.jsonl")

    def checker(model, tok, head, texts, batch_size=32):
        out = []
        for t in texts:
            p = next(p for p in problems if t.startswith(data.format_prompt(p.question)))
            truth = synthetic.step_truth(p, data.split_steps(t[len(data.format_prompt(p.question)):]))
            out.append([float(x != inverted) for x in truth])
        return out
    monkeypatch.setattr(verify, "score_solutions", checker)
    out = tmp_path / "v"
    assert shepherd.main(["verify", "--split", "test", "--limit", "8", "--solutions", str(tmp_path / "sols.jsonl"),
                          "--num-samples", "2", "--subsets", "2", "--prm", f"check={synthetic.POLICY_DIR}",
                          "--out", str(out)]) == 0
    d = json.loads((out / "results.json").read_text())["diagnostics"]["PRM-check"]
    want = 0.0 if inverted else 1.0
    assert d["slip_auc"] == want and d["step_auc"] == want
    assert inverted or d["within_auc_process"] == 1.0  # (inverted, min over steps ties right with wrong solutions)


def test_lm_step_scores_by_hand():
    """An LM read as a verifier: each step scores the lowest probability of a token from the solution's start (or the
    token after the last tag) through its tag, by hand from the model's softmax; padding and the prompt never count."""
    from model import ModelConfig
    torch.manual_seed(14)
    m = Transformer(ModelConfig(model_type="mistral", vocab_size=16, hidden_size=32, intermediate_size=64,
                                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                max_position_embeddings=32)).eval()
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.5)  # far from uniform: every token's probability differs
    tag = 9
    rows = [[1, 5, 6, 7, 9, 4, 3, 8, 9, 2], [1, 5, 4, 9, 3, 9, 0, 0, 0, 0]]  # row 2: right-padded with 0
    ids = torch.tensor(rows)
    with torch.no_grad():
        probs = m(ids).softmax(-1)
    p = lambda b, j: probs[b, j - 1, rows[b][j]].item()  # noqa: E731  p(token j | tokens < j)
    got = verify.lm_step_scores(m, ids, tag, starts=[3, 2])
    want = [[min(p(0, 3), p(0, 4)), min(p(0, j) for j in range(5, 9))],
            [min(p(1, 2), p(1, 3)), min(p(1, 4), p(1, 5))]]
    assert got == [pytest.approx(w, rel=1e-5) for w in want]
    # the tokens just outside each span (the prompt's last, the previous tag, the EOS) score lower than the span
    # itself, so a span off by one position changes the answer
    assert p(0, 2) < want[0][0] and p(0, 4) < want[0][1] and p(0, 9) < want[0][1] and p(1, 3) < want[1][1]


def test_verify_reads_the_verifier_base_as_a_reference_lm(tmp_path):
    """verify --lm: the shipped verifier base, read as an LM, ranks every reference solution above its corruption
    (a changed result or operand) and every reference step above its slip: the knowledge a PRM can start from."""
    from data import synthetic
    right_and_corrupted(tmp_path / "sols.jsonl")
    out = tmp_path / "v"
    assert shepherd.main(["verify", "--split", "test", "--limit", "8", "--solutions", str(tmp_path / "sols.jsonl"),
                          "--num-samples", "2", "--subsets", "2", "--lm", f"base={synthetic.VERIFIER_DIR}",
                          "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    d = res["diagnostics"]["LM-base"]
    assert d["within_auc_process"] == 1.0 and d["slip_auc"] > 0.95
    assert res["curve"]["2"]["LM-base-min"]["mean"] == 1.0


# Bad input: one line `error: ...`, exit code 2, nothing written (README's "Bad input")
S = ["2 * 3 = 6", "6 - 2 = 4", "4 + 10 = 14", "4 + 14 = 18", "The answer is: 18"]  # syn-test-000000's


def jsonl(path: Path, *records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def refused(capsys, *argv) -> str:
    """verify's error line, after checking it is the one line on stderr (progress bars aside), exit code 2."""
    capsys.readouterr()
    rc = shepherd.main(["verify", "--limit", "1", "--num-samples", "2", "--subsets", "2", *map(str, argv)])
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip() and not re.search(r"\d+%\|.*\]$", x)]
    assert rc == 2 and len(err) == 1, (rc, err)
    return err[0]


def files(folder: Path) -> dict:
    return {str(f): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


@pytest.mark.parametrize("record,want", [
    ({"problem_id": ["syn-test-000000"], "steps": S}, "1: field 'problem_id': expected a string, got list"),
    ({"problem_id": {"id": 0}, "steps": S}, "1: field 'problem_id': expected a string, got dict"),
    ({"problem_id": 0, "steps": S}, "1: field 'problem_id': expected a string, got int"),
    ({"question": ["x"], "steps": S}, "1: field 'question': expected a string, got list"),
    ({"steps": S}, "1: expected field 'problem_id' or 'question'"),
    # a problem verify does not rank: its record is checked all the same
    ({"problem_id": "nope", "steps": 5}, "1: field 'steps': expected a list of step strings, got int")],
    ids=["id-list", "id-dict", "id-int", "question-list", "no-problem", "unknown-problem"])
def test_verify_checks_every_solution_record(tmp_path, capsys, record, want):
    sols = jsonl(tmp_path / "s.jsonl", record, {"problem_id": "syn-test-000000", "steps": S})
    assert refused(capsys, "--solutions", sols, "--out", tmp_path / "v") == f"error: {sols}:{want}"
    assert list(tmp_path.iterdir()) == [tmp_path / "s.jsonl"]


@pytest.mark.parametrize("steps,tag,want", [
    (["2 * 3 = 6 ки 6 - 2 = 4", *S[2:]], "ки", "4 steps but 5 step tags"),
    (S, "+", "5 steps but 7 step tags")],  # --tag +: the '+' of '4 + 10 = 14' reads as a step end
    ids=["tag-in-step", "plus-tag"])
def test_verify_refuses_steps_that_hold_the_step_tag(tmp_path, capsys, steps, tag, want):
    """Every step score after such a step would be the next step's: the scores no longer line up."""
    from data import synthetic
    sols = jsonl(tmp_path / "s.jsonl", {"problem_id": "syn-test-000000", "steps": steps})
    got = refused(capsys, "--solutions", sols, "--prm", synthetic.VERIFIER_DIR, "--tag", tag, "--out", tmp_path / "v")
    assert got == f"error: {sols}:1: field 'steps': {want} after tokenization"
    assert list(tmp_path.iterdir()) == [tmp_path / "s.jsonl"]


@pytest.mark.parametrize("flag", ["--prm", "--lm"])
def test_verify_refuses_a_solution_longer_than_the_context(tmp_path, capsys, flag):
    """Cut at the context, its last steps would go unscored while its answer still counts."""
    from data import synthetic
    sols = jsonl(tmp_path / "s.jsonl", {"problem_id": "syn-test-000000", "steps": S},
                 {"problem_id": "syn-test-000000", "steps": ["1 + 1 = 2"] * 100 + ["The answer is: 2"]})
    got = refused(capsys, "--solutions", sols, flag, synthetic.VERIFIER_DIR, "--out", tmp_path / "v")
    n = got.split("'steps': ")[-1].split()[0]  # the solution's tokens, prompt included
    assert got == f"error: {sols}:2: question + field 'steps': {n} tokens do not fit the context of " \
                  f"{flag} {flag[2:].upper()} (256)" and int(n) > 256
    assert list(tmp_path.iterdir()) == [tmp_path / "s.jsonl"]


def test_verify_refuses_an_out_that_is_not_its_own(tmp_path, capsys):
    """A checkpoint folder as --out: its config.json would be overwritten by verify's."""
    from data import synthetic
    out = tmp_path / "ck"
    shutil.copytree(synthetic.POLICY_DIR, out)
    before = files(tmp_path)
    assert refused(capsys, "--out", out) == \
        f"error: {out}: --out exists and is not a verify output; choose another --out"
    assert files(tmp_path) == before


@pytest.mark.parametrize("name,text,fields", [("scores.PRM.json", "{}\n", "'key', 'scores', 'slips'"),
                                              ("scores.PRM.json", "[1", "'key', 'scores', 'slips'"),
                                              ("config.json", "{", "'sampling'")],
                         ids=["scores-empty-object", "scores-not-json", "config-not-json"])
def test_verify_refuses_a_broken_file_in_its_out(tmp_path, capsys, name, text, fields):
    from data import synthetic
    out = tmp_path / "v"
    out.mkdir()
    (out / name).write_text(text)
    if name == "config.json":  # beside samples: verify would reuse them if the settings matched
        jsonl(out / "solutions.jsonl", {"problem_id": "syn-test-000000", "index": 0, "steps": S})
        argv = []
    else:
        argv = ["--solutions", jsonl(tmp_path / "s.jsonl", {"problem_id": "syn-test-000000", "steps": S}),
                "--prm", synthetic.VERIFIER_DIR]
    before = files(tmp_path)
    assert refused(capsys, *argv, "--out", out) == \
        f"error: {out / name}: expected a JSON object with {fields}, as verify writes it (delete it to recompute)"
    assert files(tmp_path) == before


@pytest.mark.parametrize("flag,name", [("--prm", "x/y"), ("--prm", "../../escaped"), ("--orm", ".."), ("--lm", ".")])
def test_verify_refuses_a_scorer_name_that_is_not_a_plain_name(tmp_path, capsys, flag, name):
    """The name is part of a file name (scores.PRM-NAME.json): a path in it would write outside --out."""
    from data import synthetic
    sols = jsonl(tmp_path / "s.jsonl", {"problem_id": "syn-test-000000", "steps": S})
    spec = f"{name}={synthetic.VERIFIER_DIR}"
    assert refused(capsys, "--solutions", sols, flag, spec, "--out", tmp_path / "a" / "b" / "v") == \
        f"error: {flag} {spec}: expected a NAME of letters, digits, '-', '_', '.' and '%' " \
        f"(it names the file scores.{flag[2:].upper()}-NAME.json)"
    assert list(tmp_path.rglob("*")) == [tmp_path / "s.jsonl"]


def test_verify_needs_a_model_for_a_task_without_a_policy(tmp_path, capsys, monkeypatch):
    (tmp_path / "gsm8k").mkdir()
    jsonl(tmp_path / "gsm8k" / "test.jsonl", {"question": "What is 1 + 2?", "answer": "1 + 2 = 3\n#### 3"})
    monkeypatch.setenv("SHEPHERD_GSM8K_DIR", str(tmp_path / "gsm8k"))
    assert refused(capsys, "--task", "gsm8k", "--out", tmp_path / "v") == "error: --model is required for task 'gsm8k'"
    assert not (tmp_path / "v").exists()


def test_verify_leaves_no_folder_behind_when_scoring_finds_bad_weights(tmp_path, capsys):
    """NaN weights show only in the scores, once --out holds another model's: the folders this run made go again."""
    from safetensors.torch import load_file, save_file
    from data import synthetic
    ck = tmp_path / "nan"
    shutil.copytree(synthetic.VERIFIER_DIR, ck)
    t = load_file(str(ck / "model.safetensors"))
    t["model.norm.weight"][:] = float("nan")
    save_file(t, str(ck / "model.safetensors"), metadata={"format": "pt"})
    sols = jsonl(tmp_path / "s.jsonl", {"problem_id": "syn-test-000000", "steps": S})
    # the PRM is scored (and its scores cached) first, then the ORM
    assert refused(capsys, "--solutions", sols, "--prm", synthetic.VERIFIER_DIR, "--orm", ck,
                   "--out", tmp_path / "a" / "b") == \
        f"error: {ck}: the reward model's scores are not finite (NaN or inf in its weights?)"
    assert not (tmp_path / "a").exists()


def test_verify_rescores_when_the_solutions_it_ranks_change(tmp_path):
    """The score cache is keyed by every text scored: more --num-samples of the same file are scored (the key was the
    file's digest, and the old, shorter scores were read past their end)."""
    from data import synthetic
    sols = jsonl(tmp_path / "s.jsonl", *[{"problem_id": "syn-test-000000", "steps": S[:k]} for k in (5, 3, 4)])
    for n in (2, 3):
        assert shepherd.main(["verify", "--limit", "1", "--num-samples", str(n), "--subsets", "2", "--solutions", sols,
                              "--prm", synthetic.VERIFIER_DIR, "--out", str(tmp_path / "v")]) == 0
        cached = json.loads((tmp_path / "v" / "scores.PRM.json").read_text())["scores"]["syn-test-000000"]
        assert [len(x) for x in cached] == [5, 3, 4][:n]
