"""shepherd.py train: the one training loop (sft / prm / orm), its resume, and the PRM positions."""
import json
import math
from pathlib import Path

import pytest
import torch

import data
import shepherd
import train
from data import synthetic
from data.formats import StepExample
from model import PRMHead, Tokenizer, Transformer, step_scores, tag_positions


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    synthetic.build_tokenizer(d)
    return d


def log_of(out):
    return [json.loads(x) for x in (out.parent / f"{out.name}.log.jsonl").read_text().splitlines()]


def test_short_sft_run_lowers_heldout_loss(tmp_path):
    out = tmp_path / "sft"
    rc = shepherd.main(["train", "--objective", "sft", "--out", str(out), "--steps", "20", "--num-examples", "400",
                        "--batch-size", "16", "--eval-every", "10", "--heldout", "0.1", "--lr", "2e-3", "--warmup", "5",
                        "--eval-problems", "0"])
    assert rc == 0
    evals = [r["heldout_loss"] for r in log_of(out) if "heldout_loss" in r]
    chance = torch.log(torch.tensor(float(Tokenizer(out).vocab_size))).item()  # 5.31: a uniform guess
    print(f"held-out loss: chance {chance:.3f}, steps 0/10/20: {[round(x, 3) for x in evals]}")
    assert len(evals) == 3 and abs(evals[0] - chance) < 0.3  # a fresh model guesses uniformly
    assert evals[2] < evals[1] < chance - 1.5
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["step"] == 20 and state["done"] and state["settings"]["lr"] == 2e-3
    m = Transformer.from_pretrained(out)  # Hugging Face layout, with the tokenizer beside it
    assert Tokenizer(out).vocab_size == m.config.vocab_size


def test_resume_continues_with_the_same_optimizer_state(tmp_path, monkeypatch):
    args = ["train", "--objective", "sft", "--num-examples", "200", "--batch-size", "8", "--steps", "12",
            "--save-every", "6", "--eval-every", "100", "--warmup", "2", "--eval-problems", "0"]
    assert shepherd.main(args + ["--out", str(tmp_path / "a")]) == 0
    real_save = Transformer.save_pretrained

    def save_then_die(self, path, *a, **kw):  # the first (intermediate) checkpoint lands, then the run "crashes"
        real_save(self, path, *a, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(Transformer, "save_pretrained", save_then_die)
    assert shepherd.main(args + ["--out", str(tmp_path / "b")]) == 130  # Ctrl-C: one line, exit 130
    monkeypatch.setattr(Transformer, "save_pretrained", real_save)
    st = torch.load(tmp_path / "b" / "trainer_state.pt", weights_only=True)
    assert st["step"] == 6 and len(st["optimizer"]["state"]) > 0
    assert shepherd.main(args + ["--out", str(tmp_path / "b")]) == 0
    a, b = Transformer.from_pretrained(tmp_path / "a"), Transformer.from_pretrained(tmp_path / "b")
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), k  # bit-identical to the uninterrupted run
    losses_a = [r["loss"] for r in log_of(tmp_path / "a") if "loss" in r]
    losses_b = [r["loss"] for r in log_of(tmp_path / "b") if "loss" in r]
    assert losses_b == losses_a


def test_a_finished_run_is_not_trained_again_unless_restarted(tmp_path, capsys):
    args = ["train", "--objective", "sft", "--num-examples", "64", "--batch-size", "8", "--steps", "2",
            "--eval-every", "100", "--warmup", "1", "--eval-problems", "0", "--out", str(tmp_path / "m")]
    assert shepherd.main(args) == 0
    weights = tmp_path / "m" / "model.safetensors"
    before, log = weights.stat().st_mtime_ns, log_of(tmp_path / "m")
    capsys.readouterr()
    assert shepherd.main(args) == 0
    assert "training already finished" in capsys.readouterr().out
    assert weights.stat().st_mtime_ns == before and log_of(tmp_path / "m") == log  # nothing rewritten
    assert shepherd.main(args + ["--restart", "--steps", "3"]) == 0
    assert json.loads((tmp_path / "m" / "trainer_state.json").read_text())["step"] == 3


def _tiny(tok_dir):
    torch.manual_seed(0)
    tok = Tokenizer(tok_dir)
    return train.scratch_model("tiny", tok, 256).eval(), tok, PRMHead.from_tokenizer(tok)


def test_prm_loss_reads_the_positions_inference_scores(tok_dir):
    model, tok, head = _tiny(tok_dir)
    exs = [StepExample(data.format_prompt("Tom has 3 apples.") + data.join_steps(["3 + 4 = 7", "The answer is: 7"]),
                                [1.0, 0.0], 0.0),
           StepExample(data.format_prompt("Ann has 2 boxes.") + data.join_steps(["2 * 5 = 10", "10 - 1 = 9",
                                                                                          "The answer is: 9"]),
                                [1.0, 0.5, 1.0], 1.0)]
    enc = [train.encode_steps(tok, head, e, "prm") for e in exs]
    batch = train.collate(enc, tok.pad_id, "cpu")
    with torch.no_grad():
        loss, probs, targets = train.objective_loss(model, batch, "prm", head)
        scores = step_scores(model, batch["ids"], head)
    assert probs.tolist() == pytest.approx([s for row in scores for s in row], abs=1e-6)
    assert targets.tolist() == [1.0, 0.0, 1.0, 0.5, 1.0]
    # the loss is the mean BCE of those very probabilities (Math-Shepherd Eq. 2)
    want = -sum(y * torch.log(p) + (1 - y) * torch.log(1 - p) for p, y in zip(probs, targets)) / 5
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    # ORM (Eq. 1): only the last tag of each solution, with the outcome label
    orm = train.collate([train.encode_steps(tok, head, e, "orm") for e in exs], tok.pad_id, "cpu")
    assert orm["mask"].sum(1).tolist() == [1, 1] and orm["targets"].tolist() == [0.0, 1.0]
    last_tags = [tag_positions(e.ids, head.tag)[-1] for e in enc]
    assert [int(orm["mask"][b].nonzero()) for b in range(2)] == last_tags


def test_lm_coef_adds_the_next_token_loss_of_right_solutions_only(tok_dir, tmp_path):
    """--lm-coef: BCE + c x the mean next-token loss over the solution tokens (not the prompt's,
    not where the reward loss reads) of the solutions whose answer is right, by hand from the logits."""
    model, tok, head = _tiny(tok_dir)
    q1, q2 = "Tom has 3 apples. How many?", "Ann has 2 boxes. How many?"
    recs = [{"question": q1, "steps": ["3 + 4 = 7", "The answer is: 7"], "hard": [1, 1], "correct": True},
            {"question": q2, "steps": ["2 * 5 = 10", "The answer is: 11"], "hard": [1, 0], "correct": False},
            {"input": q1 + " Step 1: 3 + 4 = 7 ки\nStep 2: The answer is: 7 ки",  # Math-Shepherd: prompt = question
             "label": q1 + " Step 1: 3 + 4 = 7 +\nStep 2: The answer is: 7 +"}]
    (tmp_path / "l.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    exs = data.formats.read_step_examples(tmp_path / "l.jsonl")
    assert [e.text[:e.prompt_len] for e in exs] == [data.format_prompt(q1), data.format_prompt(q2), q1]
    for objective in ("prm", "orm"):
        enc = [train.encode_steps(tok, head, e, objective) for e in exs]
        batch = train.collate(enc, tok.pad_id, "cpu")
        with torch.no_grad():
            bce, _, _ = train.objective_loss(model, batch, objective, head)
            both, _, _ = train.objective_loss(model, batch, objective, head, lm_coef=0.5)
            logp = model(batch["ids"]).log_softmax(-1)
        nll = []
        for b, (e, ex) in enumerate(zip(enc, exs)):
            if ex.outcome != 1:  # a wrong solution: the verifier must not learn to write it
                continue
            start = len(tok.encode(data.to_model_tag(ex.text[:ex.prompt_len], head.text)))
            read = set(tag_positions(e.ids, head.tag)[-1 if objective == "orm" else 0:])
            nll += [-logp[b, t, e.ids[t + 1]] for t in range(start - 1, len(e.ids) - 1) if t not in read]
        # the right solutions' 16 and 25 response tokens, less the PRM's tags before the last
        assert len(nll) == {"prm": 15 + 24, "orm": 16 + 25}[objective]
        assert (both - bce).item() == pytest.approx(0.5 * torch.stack(nll).mean().item(), rel=1e-5)
    wrong = train.collate([enc[1]], tok.pad_id, "cpu")  # only a wrong solution: no LM term, not NaN
    with torch.no_grad():
        assert train.objective_loss(model, wrong, "orm", head, 0.5)[0] == train.objective_loss(model, wrong, "orm", head)[0]


def test_step_label_count_mismatch_is_a_clear_error(tok_dir):
    _, tok, head = _tiny(tok_dir)
    ex = StepExample("Q\n1 + 1 = 2 ки", [1.0, 0.0], 0.0, id="rec-7")
    with pytest.raises(shepherd.InputError, match="rec-7: 2 labels but 1 step tags"):
        train.encode_steps(tok, head, ex, "prm")


def test_lr_schedule_and_auc():
    assert train.lr_at(0, 100, 1.0, 10, 0.1) == pytest.approx(0.1)
    assert train.lr_at(9, 100, 1.0, 10, 0.1) == pytest.approx(1.0)
    assert train.lr_at(55, 100, 1.0, 10, 0.1) == pytest.approx(0.55)  # halfway down the cosine
    assert train.lr_at(100, 100, 1.0, 10, 0.1) == pytest.approx(0.1)
    assert shepherd.auc([0.9, 0.8, 0.3, 0.1], [1, 1, 0, 0]) == 1.0
    assert shepherd.auc([0.1, 0.2, 0.8], [1, 0, 0]) == 0.0
    assert shepherd.auc([0.5, 0.5, 0.5, 0.9], [1, 0, 1, 0]) == pytest.approx(0.25)  # ties count half
    assert math.isnan(shepherd.auc([float("nan"), 0.2, 0.8], [1, 0, 0]))  # NaN scores (it looped forever on them)


@pytest.mark.skipif(not (Path(synthetic.POLICY_DIR) / "config.json").exists(), reason="the tiny policy is not built")
def test_shipped_policy_is_in_the_accuracy_band():
    """The policy that `synthetic.POLICY_COMMAND` trains: greedy accuracy in [30%, 70%] on 200 held-out problems,
    errors at several different steps, and some outcome-correct solutions with a false step (ORM false positives)."""
    model, tok = Transformer.from_pretrained(synthetic.POLICY_DIR), Tokenizer(synthetic.POLICY_DIR)
    res = train.evaluate_policy(model, tok, synthetic, synthetic.load("test")[:200])
    print(res)
    assert 0.30 <= res["accuracy"] <= 0.70
    assert len(res["first_wrong_step"]) >= 4
    assert 0 < res["correct_with_false_step"] < 0.5


@pytest.mark.skipif(not (Path(synthetic.VERIFIER_DIR) / "config.json").exists(), reason="the verifier base is not built")
def test_shipped_verifier_base_checks_the_world_better_than_the_policy():
    """`synthetic.VERIFIER_COMMAND`'s model: twice the policy's depth, an LM head of its own, and far stronger at the
    world than the policy."""
    model, tok = Transformer.from_pretrained(synthetic.VERIFIER_DIR), Tokenizer(synthetic.VERIFIER_DIR)
    policy = Transformer.from_pretrained(synthetic.POLICY_DIR)
    assert model.config.num_hidden_layers == 2 * policy.config.num_hidden_layers == 8
    assert not model.config.tie_word_embeddings and model.lm_head.weight is not model.model.embed_tokens.weight
    assert tok.vocab_size == Tokenizer(synthetic.POLICY_DIR).vocab_size  # one world, one tokenizer
    res = train.evaluate_policy(model, tok, synthetic, synthetic.load("test")[:200])
    print(res)
    assert res["accuracy"] >= 0.9  # the policy: 0.525


def test_untie_keeps_the_outputs_and_saves_a_head_of_its_own(tmp_path, tok_dir):
    model, tok, _ = _tiny(tok_dir)
    ids = torch.tensor([tok.encode("3 + 4 = 7")])
    ref = model(ids)
    model.untie()
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    torch.testing.assert_close(model(ids), ref, rtol=0, atol=0)
    with torch.no_grad():
        model.lm_head.weight[tok.encode("+")[-1]] += 1.0  # the output row moves, the input embedding does not
    model.save_pretrained(tmp_path / "u", tokenizer_dir=tok_dir)
    back = Transformer.from_pretrained(tmp_path / "u")
    assert not back.config.tie_word_embeddings
    torch.testing.assert_close(back(ids), model(ids))
    torch.testing.assert_close(back.model.embed_tokens.weight, _tiny(tok_dir)[0].model.embed_tokens.weight)


@pytest.mark.parametrize("labels", ["hard", "soft"])
def test_short_prm_run_lowers_heldout_loss(tmp_path, labels):
    """Label records whose labels are the synthetic world's exact truth (hard) or a noisy fraction (soft)."""
    import random
    rng = random.Random(0)
    lines = []
    for i, p in enumerate(synthetic.load("train")[:240]):
        steps = data.split_steps(p.meta["solution"] if i % 2 else synthetic.corrupt(p, rng))
        truth = synthetic.step_truth(p, steps)
        lines.append(json.dumps({"id": p.id, "question": p.question, "steps": steps, "correct": truth[-1],
                                 "hard": [int(t) for t in truth], "soft": [0.75 if t else 0.125 for t in truth]}))
    (tmp_path / "labels.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "prm"
    assert shepherd.main(["train", "--objective", "prm", "--labels", labels, "--data", str(tmp_path / "labels.jsonl"),
                          "--model", synthetic.POLICY_DIR, "--out", str(out), "--steps", "20", "--batch-size", "16",
                          "--lr", "1e-3", "--warmup", "4", "--eval-every", "10", "--heldout", "0.15"]) == 0
    evals = [r for r in log_of(out) if "heldout_loss" in r]
    print(labels, [(r["step"], round(r["heldout_loss"], 3), round(r["heldout_auc"], 3)) for r in evals])
    assert [r["step"] for r in evals] == [0, 10, 20]
    assert evals[-1]["heldout_loss"] < evals[0]["heldout_loss"] - 0.02
    assert evals[-1]["heldout_auc"] > evals[0]["heldout_auc"] + 0.1


@pytest.mark.parametrize("objective", ["sft", "prm"])
def test_packed_batches_give_the_padded_loss(tok_dir, objective):
    model, tok, head = _tiny(tok_dir)
    problems = synthetic.load("train")[:6]
    if objective == "sft":
        exs = [train.encode_sft(tok, data.format_prompt(p.question), p.meta["solution"]) for p in problems]
    else:
        exs = [train.encode_steps(tok, head, StepExample(
            data.format_prompt(p.question) + p.meta["solution"], [1.0, 0.0, 0.5, 1.0, 0.0, 1.0, 1.0][:p.meta["solution"].count("ки")],
            1.0), "prm") for p in problems]
    padded = train.collate(exs, tok.pad_id, "cpu")
    packed = train.collate(exs, tok.pad_id, "cpu", pack_len=256)
    assert packed["ids"].shape[0] < padded["ids"].shape[0]  # fewer rows
    assert (packed["ids"] != tok.pad_id).sum() == (padded["ids"] != tok.pad_id).sum()
    with torch.no_grad():
        a, _, _ = train.objective_loss(model, padded, objective, head)
        b, _, _ = train.objective_loss(model, packed, objective, head)
    print(objective, padded["ids"].shape, packed["ids"].shape, a.item(), b.item())
    assert b.item() == pytest.approx(a.item(), abs=1e-5)


def test_torchrun_trains_data_parallel(tmp_path):
    """Two gloo processes: each takes half of every global batch, DDP averages the gradients; the run learns."""
    import os
    import subprocess
    import sys
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "ddp"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541",
                        str(root / "shepherd.py"), "train", "--objective", "sft", "--out", str(out), "--steps", "10",
                        "--num-examples", "300", "--batch-size", "16", "--eval-every", "10", "--heldout", "0.1",
                        "--lr", "2e-3", "--warmup", "3", "--eval-problems", "0", "--device", "cpu"],
                       cwd=root, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    evals = [x["heldout_loss"] for x in log_of(out) if "heldout_loss" in x]
    assert len(evals) == 2 and evals[1] < evals[0] - 1.5  # one log, written by rank 0 only
    assert Transformer.from_pretrained(out).config.vocab_size == Tokenizer(out).vocab_size


# Bad input and interrupted runs (the README's contract): one `error:` line, exit 2, nothing left behind

CF = {"question": "Tom has 3 apples. He buys 4 more apples. How many apples does Tom have now?",
      "steps": ["3 + 4 = 7", "The answer is: 7"], "gold": "7", "hard": [1, 1], "correct": 1.0}
PRM = ["train", "--objective", "prm", "--steps", "1", "--batch-size", "1", "--heldout", "0"]


def one_record(path):
    path.write_text(json.dumps(CF) + "\n")
    return str(path)


def error_line(capsys):
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip() and "%|" not in x]  # not a progress bar
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def snapshot(folder):
    return {str(f): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def test_a_batch_larger_than_the_data_wraps_around(tmp_path):
    """The global batch is a slice of the epoch's permutation that wraps around its end as often as it takes
    (was: empty micro-batches, then a ValueError traceback)."""
    d = shepherd.Dist()
    assert [train.batch_indices(0, m, 1, 4, 0, d, 1) for m in range(4)] == [[0]] * 4
    assert sorted(sum((train.batch_indices(3, m, 3, 8, 0, d, 2) for m in range(4)), [])) == [0, 0, 0, 1, 1, 1, 2, 2]
    out = tmp_path / "prm"
    assert shepherd.main(PRM + ["--data", one_record(tmp_path / "cf.jsonl"), "--batch-size", "4", "--grad-accum", "4",
                                "--out", str(out)]) == 0
    assert [r["step"] for r in log_of(out)] == [1] and math.isfinite(log_of(out)[0]["loss"])


def interrupted_at_step_2(monkeypatch, args):
    """A run killed after its step-2 checkpoint (Ctrl-C): resumable at step 2."""
    real_save = Transformer.save_pretrained

    def save_then_die(self, path, *a, **kw):
        real_save(self, path, *a, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(Transformer, "save_pretrained", save_then_die)
    assert shepherd.main(args) == 130
    monkeypatch.setattr(Transformer, "save_pretrained", real_save)


def test_a_torn_log_line_is_dropped_and_a_broken_one_refused_untouched(tmp_path, monkeypatch, capsys):
    """A run killed mid-write leaves a last line without its newline: the resume drops it and keeps the rest. A bad
    line before it is an error naming file:line, the log left as it was (was: a JSONDecodeError, the log emptied)."""
    out = tmp_path / "sft"
    args = ["train", "--num-examples", "32", "--batch-size", "8", "--steps", "4", "--save-every", "2",
            "--eval-every", "2", "--eval-problems", "0", "--out", str(out)]
    interrupted_at_step_2(monkeypatch, args)
    log = tmp_path / "sft.log.jsonl"
    good = log.read_text()
    lines = good.splitlines(keepends=True)
    log.write_text(lines[0] + "{not json\n" + "".join(lines[1:]) + '{"step": 3, "loss": 1.06')
    broken = log.read_bytes()
    capsys.readouterr()
    assert shepherd.main(args) == 2
    assert error_line(capsys) == (f"error: {log}:2: expected a log record (JSON with 'step'): not this run's log, "
                                  f"or a damaged one; move it away or fix the line")
    assert log.read_bytes() == broken
    log.write_text(good + '{"step": 3, "loss": 1.06')  # torn by the kill
    assert shepherd.main(args) == 0
    assert [r["step"] for r in log_of(out)] == [0, 1, 2, 3, 4]
    assert log.read_text().startswith(good)


def test_an_unreadable_data_file_is_named_as_read(tmp_path):
    """Reading --data (for its digest) without permission: the error label and verify give, not 'cannot write'."""
    import os
    import shutil
    import subprocess
    import sys
    data_file = Path(one_record(tmp_path / "noperm.jsonl"))
    data_file.chmod(0)
    prefix = []
    if os.geteuid() == 0:  # root reads anything: run without the capabilities that let it
        if not shutil.which("setpriv"):
            pytest.skip("root without setpriv")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run(prefix + [sys.executable, str(root / "shepherd.py"), *PRM, "--data", str(data_file), "--out",
                                 str(tmp_path / "out" / "prm")], cwd=root, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2 and r.stderr == f"error: {data_file}: Permission denied; expected a JSONL file\n", r.stderr
    assert not (tmp_path / "out").exists()


def test_a_finished_run_refuses_other_settings(tmp_path, capsys):
    """A finished --out is 'already finished' only for the command that made it; another objective, --lr, --steps or
    --data is refused as a resume refuses it (was: exit 0, the settings and the broken --data ignored)."""
    args = ["train", "--num-examples", "8", "--batch-size", "4", "--steps", "1", "--eval-problems", "0",
            "--out", str(tmp_path / "m")]
    assert shepherd.main(args) == 0
    (tmp_path / "broken.jsonl").write_text('{"question": \n')
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert shepherd.main(["train", "--objective", "prm", "--data", str(tmp_path / "broken.jsonl"), "--lr", "5e-4",
                          "--steps", "7", "--out", str(tmp_path / "m")]) == 2
    err = error_line(capsys)
    assert err.startswith(f"error: {tmp_path / 'm' / 'trainer_state.json'}: made with other settings (--objective "
                          f"'sft' -> 'prm'; --data None -> '{tmp_path / 'broken.jsonl'}'; "), err
    assert "--steps 1 -> 7" in err and "--lr 0.001 -> 0.0005" in err and "--restart" in err, err
    assert shepherd.main(args[:-2] + ["--lr", "5e-4", "--out", str(tmp_path / "m")]) == 2
    assert "made with other settings (--lr 0.001 -> 0.0005)" in error_line(capsys)
    assert snapshot(tmp_path) == before
    assert shepherd.main(args) == 0 and "training already finished" in capsys.readouterr().out
    assert snapshot(tmp_path) == before


def test_data_at_the_log_path_or_a_foreign_log_is_never_overwritten(tmp_path, capsys):
    """--data cannot be a file the run writes (its log); a file at OUT.log.jsonl is replaced only if it is a log of
    records with 'step' (what a run killed before its first checkpoint leaves), else refused untouched."""
    data_file = one_record(tmp_path / "prm.log.jsonl")
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert shepherd.main(PRM + ["--data", data_file, "--out", str(tmp_path / "prm")]) == 2
    assert error_line(capsys) == (f"error: --data {data_file}: train would overwrite it (the log, evaluation or "
                                  f"checkpoint of --out {tmp_path / 'prm'}); choose another --out")
    assert snapshot(tmp_path) == before
    (tmp_path / "notes.log.jsonl").write_text('{"step": 1}\nmy notes\n')
    before = snapshot(tmp_path)
    assert shepherd.main(PRM + ["--data", data_file, "--out", str(tmp_path / "notes")]) == 2
    assert error_line(capsys).startswith(f"error: {tmp_path / 'notes.log.jsonl'}:2: expected a log record (JSON with "
                                         f"'step'): not this run's log")
    assert snapshot(tmp_path) == before
    (tmp_path / "killed.log.jsonl").write_text('{"step": 0, "heldout_loss": 5.3}\n{"step": 1, "lo')  # ours, killed
    assert shepherd.main(PRM + ["--data", data_file, "--out", str(tmp_path / "killed")]) == 0
    assert [r["step"] for r in log_of(tmp_path / "killed")] == [1]


@pytest.mark.parametrize("how", ["nan", "ctrl-c"])
def test_a_failed_run_leaves_no_new_folder(tmp_path, capsys, monkeypatch, how):
    """No checkpoint written: the log and the folders this run made go (a folder that was there stays)."""
    real = train.objective_loss

    def fail(*a, **kw):  # as --lr 1e30 does, or Ctrl-C, mid-step
        if how == "ctrl-c":
            raise KeyboardInterrupt
        loss, p, t = real(*a, **kw)
        return loss * float("nan"), p, t

    monkeypatch.setattr(train, "objective_loss", fail)
    data_file = one_record(tmp_path / "cf.jsonl")
    (tmp_path / "kept").mkdir()
    capsys.readouterr()
    rc = shepherd.main(PRM + ["--data", data_file, "--out", str(tmp_path / "kept" / "a" / "b" / "prm")])
    if how == "nan":
        assert rc == 2 and "loss is nan at step 0" in error_line(capsys)
    else:
        assert rc == 130 and capsys.readouterr().err.strip().splitlines()[-1].startswith("interrupted; ")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["cf.jsonl", "kept"]


def test_scratch_tokenizer_is_removed_on_every_error(tmp_path, capsys, monkeypatch):
    """--model scratch builds its tokenizer in a temp folder: gone after any error, and never named in one."""
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    data_file = one_record(tmp_path / "cf.jsonl")
    capsys.readouterr()
    assert shepherd.main(PRM + ["--data", data_file, "--good", "+", "--bad", "+", "--out", str(tmp_path / "a")]) == 2
    assert error_line(capsys) == "error: --tag/--good/--bad: '+' and '+': expected two different tokens; both are 31"
    assert not any((tmp_path / "tmp").iterdir())

    def interrupt(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "scratch_model", interrupt)  # not an InputError
    assert shepherd.main(PRM + ["--data", data_file, "--out", str(tmp_path / "b")]) == 130
    assert not any((tmp_path / "tmp").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cf.jsonl", "tmp"]


@pytest.mark.parametrize("under", ["afile", "afile/sub"])
def test_out_under_a_regular_file_is_one_line(tmp_path, capsys, under):
    (tmp_path / "afile").write_text("mine\n")
    out = tmp_path / under / "prm"
    assert shepherd.main(PRM + ["--data", one_record(tmp_path / "cf.jsonl"), "--out", str(out)]) == 2
    assert error_line(capsys) == f"error: {out}: {tmp_path / 'afile'} is a file; expected a folder path"
    assert (tmp_path / "afile").read_text() == "mine\n" and sorted(p.name for p in tmp_path.iterdir()) == [
        "afile", "cf.jsonl"]


def test_a_task_without_a_scratch_tokenizer_needs_a_model(tmp_path, capsys):
    """gsm8k trains a checkpoint's tokenizer: without --model it is label's error line (was an AttributeError)."""
    assert shepherd.main(["train", "--task", "gsm8k", "--steps", "1", "--eval-problems", "0",
                          "--out", str(tmp_path / "m")]) == 2
    assert error_line(capsys) == "error: --model is required for task 'gsm8k'"
    assert not any(tmp_path.iterdir())
