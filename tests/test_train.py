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
