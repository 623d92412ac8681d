"""ppo.py: GAE, reward placement, the KL term and the clipped losses against hand computations; the token grid
against a plain forward; then whole runs on a tiny world built here: two gloo processes give the one-process
update, a resumed run is the uninterrupted one, and a short run raises the mean PRM reward.

One-line mutations of ppo.py each of which fails at least one test here (checked by applying each):
    kl_coef default 0.04 -> 0                        test_build_batch_by_hand
    KL sign flipped (ref - old)                      test_kl_penalty_per_token
    advantages not whitened                          test_build_batch_by_hand
    GAE's lambda -> 1                                test_build_batch_by_hand
    value loss summed over padding too               test_update_steps_down_the_masked_token_mean_gradients
    value loss x 0                                   test_update_steps_down_the_masked_token_mean_gradients
    token sum instead of token mean                  test_update_steps_down_the_masked_token_mean_gradients
    `answered` ignored (no penalty ever)             test_rollout_penalises_exactly_the_responses_without_an_answer
    policy-gradient sign flipped                     test_clipped_losses_by_hand
    no-answer penalty on the first token             test_grid_and_reward_placement
    a response's text read with the raw --tag        test_a_tag_of_the_policys_own_is_read_back_as_ki
"""
import contextlib
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import data
import ppo
import shepherd
from data import synthetic
from model import ModelConfig, PRMHead, Tokenizer, Transformer, step_scores
from sampler import Sampler

ROOT = Path(__file__).resolve().parents[1]
TAG, EOS, PAD = 8, 2, 3  # in the tiny vocabulary below
VOCAB = ["<unk>", "<s>", "</s>", "<pad>", "▁", "\n", "1", "2", "▁ки", "▁+", "▁-"]


# ----------------------------------------------------------------------------------------------------------------
# Hand computations


def close(t: torch.Tensor, want):
    torch.testing.assert_close(t.float(), torch.tensor(want, dtype=torch.float32), atol=1e-6, rtol=0)


def test_gae_and_returns_by_hand():
    # one row worked out on paper: step rewards at k = 1 (a tag) and k = 2 (the last token); gamma 1, lambda 0.95
    r, v, m = torch.tensor([[0.0, 1.0, -0.5]]), torch.tensor([[0.5, 0.6, 0.2]]), torch.ones(1, 3, dtype=torch.bool)
    adv, ret = ppo.gae(r, v, m, 1.0, 0.95)
    # delta_2 = -0.5 + 0 - 0.2 = -0.7 (nothing after the last token); delta_1 = 1 + 0.2 - 0.6 = 0.6;
    # delta_0 = 0 + 0.6 - 0.5 = 0.1.  A_2 = -0.7, A_1 = 0.6 + 0.95(-0.7) = -0.065, A_0 = 0.1 + 0.95 A_1 = 0.03825
    assert adv[0].tolist() == pytest.approx([0.03825, -0.065, -0.7], abs=1e-6)
    assert ret[0].tolist() == pytest.approx([0.53825, 0.535, -0.5], abs=1e-6)  # A + V
    # rows of different lengths, garbage in the padding: each row against the direct sum A_t = sum_l (g l)^l d_{t+l}
    L = [5, 3, 1]
    m = torch.arange(5)[None] < torch.tensor(L)[:, None]
    r = torch.where(m, torch.tensor([[0, .3, 0, 0, -.2], [.5, 0, .7, 0, 0], [.9, 0, 0, 0, 0]]), 0.0)
    v = torch.where(m, torch.tensor([[.1, .2, .3, .4, .5], [.6, .7, .8, 0, 0], [.25, 0, 0, 0, 0]]), 100.0)
    for gamma, lam in ((1.0, 0.95), (0.9, 0.8)):
        adv, ret = ppo.gae(r, v, m, gamma, lam)
        for b, n in enumerate(L):
            vals = v[b, :n].tolist() + [0.0]
            delta = [r[b, t].item() + gamma * vals[t + 1] - vals[t] for t in range(n)]
            want = [sum((gamma * lam) ** l * delta[t + l] for l in range(n - t)) for t in range(n)]
            assert adv[b, :n].tolist() == pytest.approx(want, abs=1e-6)
            assert ret[b, :n].tolist() == pytest.approx([a + x for a, x in zip(want, vals)], abs=1e-6)
            assert adv[b, n:].abs().sum() == 0 and ret[b, n:].abs().sum() == 0  # padding: nothing, whatever V says
    w = ppo.whiten(adv, m)
    assert w[m].mean().item() == pytest.approx(0, abs=1e-6) and w[m].std(unbiased=False).item() == pytest.approx(1, abs=1e-4)
    assert w[~m].abs().sum() == 0


def grid():
    # row 0: prompt [1, 5, 6], response "6 ки 7 ки </s>"; row 1: prompt [1, 7], response "7 ки 6" cut by the limit
    return ppo.make_grid([[1, 5, 6], [1, 7]], [[6, TAG, 7, TAG, EOS], [7, TAG, 6]], PAD, "cpu")


def test_grid_and_reward_placement():
    g = grid()
    assert g["ids"].tolist() == [[1, 5, 6, 6, TAG, 7, TAG, EOS], [1, 7, 7, TAG, 6, PAD, PAD, PAD]]
    assert g["mask"].tolist() == [[True] * 5, [True] * 3 + [False] * 2]
    assert g["pos"].tolist() == [[2, 3, 4, 5, 6], [1, 2, 3, 1, 1]]  # the position whose logits predict each token
    decode = lambda ids: "".join(VOCAB[i].replace("▁", " ") for i in ids if i > 3)  # noqa: E731
    # row 0: two tagged steps, then EOS; row 1: one tagged step, then "1" cut by the limit: an untagged tail
    steps = [ppo.response_steps([6, TAG, 7, TAG, EOS], TAG, True, decode),
             ppo.response_steps([7, TAG, 6], TAG, False, decode)]
    assert steps == [[(0, 1), (2, 3)], [(0, 1), (2, 2)]]
    assert ppo.response_steps([6, TAG, 5, EOS], TAG, True, decode) == [(0, 1)]  # a tail of whitespace is no step
    assert ppo.response_steps([EOS], TAG, True, decode) == []
    ends = ppo.end_mask(steps, g["mask"].shape)
    assert ends.tolist() == [[False, True, False, True, False], [False, True, True, False, False]]
    p = torch.tensor([[.1, .2, .3, .4, .5], [.6, .7, .8, .9, .95]])  # p(+) of the step ending at each token
    answered = torch.tensor([True, False])
    prm = ppo.score_rewards(ends, p, g["mask"], answered, kind="prm", center=0.5, penalty=-1.0)
    close(prm, [[0, .2 - .5, 0, .4 - .5, 0],  # on each step's tag, not on EOS
                [0, .7 - .5, .8 - .5 - 1.0, 0, 0]])  # the tail's score and the no-answer penalty on the last token
    orm = ppo.score_rewards(ends, p, g["mask"], answered, kind="orm", center=0.5, penalty=-1.0)
    close(orm, [[0, 0, 0, 0, .4 - .5],  # the LAST step's score, on the last token (EOS)
                [0, 0, .8 - .5 - 1.0, 0, 0]])
    no_step = ppo.make_grid([[1]], [[EOS]], PAD, "cpu")
    assert ppo.score_rewards(torch.zeros(1, 1, dtype=torch.bool), torch.tensor([[.9]]), no_step["mask"],
                             torch.tensor([False]), kind="orm", center=0.5, penalty=-1.0).tolist() == [[-1.0]]


def test_the_untagged_tail_is_read_at_an_appended_tag(tmp_path):
    """The reward model scores an untagged last step as if it were tagged: the same p(+) as the tagged response."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
    rm, head = Transformer(cfg).eval(), PRMHead(TAG, 9, 10)
    decode = lambda ids: "".join(VOCAB[i] for i in ids if i > 3)  # noqa: E731
    tagged, untagged = [6, TAG, 7, 6, TAG, EOS], [6, TAG, 7, 6, EOS]
    steps = [ppo.response_steps(r, TAG, True, decode) for r in (tagged, untagged)]
    assert steps == [[(0, 1), (2, 4)], [(0, 1), (2, 3)]]
    with torch.no_grad():
        p = ppo.step_end_probs(rm, [[1, 5], [1, 5]], [tagged, untagged], steps, head, PAD, "cpu")
        want = step_scores(rm, torch.tensor([[1, 5] + tagged]), head)[0]
    assert p[0, [1, 4]].tolist() == pytest.approx(want, abs=1e-6)
    assert p[1, [1, 3]].tolist() == pytest.approx(want, abs=1e-6)  # the tail's score sits on its last token (3)
    assert p[0, [0, 2, 3, 5]].abs().sum() == 0 and p[1, [0, 2, 4]].abs().sum() == 0


def test_kl_penalty_per_token():
    g = grid()
    score = torch.zeros(2, 5)
    score[0, 1] = 0.3
    old = torch.tensor([[-1.0, -2.0, -0.5, -0.1, -0.2], [-0.3, -0.4, -0.5, 7.0, 7.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5, -0.3, -0.2], [-0.3, -0.9, -0.1, 0.0, 0.0]])
    rewards, kl = ppo.total_rewards(score, old, ref, g["mask"], 0.04)
    close(kl, [[0.5, -1.0, 0, 0.2, 0], [0, 0.5, -0.4, 0, 0]])  # log pi_old - log pi_ref; padding (7 - 0) masked
    close(rewards, [[-0.02, 0.3 + 0.04, 0, -0.008, 0], [0, -0.02, 0.016, 0, 0]])  # score - 0.04 kl


def test_clipped_losses_by_hand():
    eps = 0.2
    old = torch.zeros(4)
    lp = torch.log(torch.tensor([1.5, 0.5, 0.5, 1.5])).requires_grad_()
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    values = torch.tensor([0.5, 0.5, 0.5, 0.5], requires_grad=True)
    old_v, ret = torch.zeros(4), torch.tensor([1.0, 0.3, -1.0, 0.5])
    pg, ratio = ppo.policy_loss(lp, old, adv, eps)
    vf = ppo.value_loss(values, old_v, ret, 0.2)
    # A > 0: the gain stops at 1 + eps (1.5 -> 1.2), a loss is never clipped (0.5 stays); A < 0 mirrored
    assert pg.tolist() == pytest.approx([-1.2, -0.5, 0.8, 1.5])
    assert ratio.tolist() == pytest.approx([1.5, 0.5, 0.5, 1.5])
    # value: V_clip = 0 + clip(0.5, +-0.2) = 0.2;  0.5 max((V - R)^2, (V_clip - R)^2)
    assert vf.tolist() == pytest.approx([0.5 * 0.64, 0.5 * 0.04, 0.5 * 2.25, 0.5 * 0.09])
    (pg.sum() + vf.sum()).backward()
    assert lp.grad.tolist() == pytest.approx([0, -0.5, 0, 1.5])  # clipped tokens pull no more: zero gradient
    assert values.grad.tolist() == pytest.approx([0, 0.2, 1.5, 0])  # the clipped branch won: no gradient to V


def hand_rows():
    """Two rollout rows as rollout() leaves them: responses of 5 and 3 tokens (the grid() above)."""
    return [{"prompt": [1, 5, 6], "response": [6, TAG, 7, TAG, EOS], "old_lp": [-1.0, -2.0, -0.5, -0.1, -0.2],
             "ref_lp": [-1.5, -1.0, -0.5, -0.3, -0.2], "value": [0.1, 0.2, -0.1, 0.3, 0.0],
             "score": [0.0, 0.3, 0.0, -0.2, 0.0]},
            {"prompt": [1, 7], "response": [7, TAG, 6], "old_lp": [-0.3, -0.4, -0.5], "ref_lp": [-0.3, -0.9, -0.1],
             "value": [0.5, -0.2, 0.4], "score": [0.0, 0.1, -1.0]}]


def test_build_batch_by_hand():
    """Default settings: r = score - 0.04 (log pi_old - log pi_ref); returns = the lambda-return with lambda 0.95, gamma 1;
    advantages whitened over the valid tokens (mean 0, std 1)."""
    cfg, rows = ppo.Config(), hand_rows()
    g = ppo.build_batch(cfg, rows, SimpleNamespace(pad_id=PAD, device="cpu"))
    for b, r in enumerate(rows):
        n = len(r["response"])
        rew = [s - 0.04 * (o - f) for s, o, f in zip(r["score"], r["old_lp"], r["ref_lp"])]
        assert g["rewards"][b, :n].tolist() == pytest.approx(rew, abs=1e-6)
        adv, nxt_v, nxt_a = [0.0] * n, 0.0, 0.0  # GAE written out: delta = r + V' - V, A = delta + 0.95 A'
        for k in reversed(range(n)):
            adv[k] = rew[k] + nxt_v - r["value"][k] + 0.95 * nxt_a
            nxt_v, nxt_a = r["value"][k], adv[k]
        assert g["returns"][b, :n].tolist() == pytest.approx([a + v for a, v in zip(adv, r["value"])], abs=1e-6)
        r["adv"] = adv
    flat = torch.tensor([a for r in rows for a in r["adv"]])
    want = (flat - flat.mean()) / flat.std(unbiased=False)
    assert g["adv"][g["mask"]].tolist() == pytest.approx(want.tolist(), abs=1e-5)
    assert g["adv"][~g["mask"]].abs().sum() == 0


def test_update_steps_down_the_masked_token_mean_gradients():
    """One minibatch, one epoch, plain SGD: the policy and the critic each move by -lr x the gradient of their loss
    averaged over the valid tokens of the minibatch (padding inside a micro-batch counts for nothing)."""
    torch.manual_seed(0)
    mc = ModelConfig(vocab_size=len(VOCAB), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                     num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32, tie_word_embeddings=True)
    policy, critic = Transformer(mc), ppo.ValueModel(Transformer(mc))
    torch.nn.init.normal_(critic.head.weight, std=0.5)  # a live head, so the backbone gets gradients too
    cfg = ppo.Config(epochs=1, minibatch_size=2, micro_batch=2, max_grad_norm=1e9, warmup=0, lr=0.1, critic_lr=0.1)
    rows = hand_rows()
    with torch.no_grad():  # pi_old and V_old from the models themselves, as rollout() makes them
        g0 = ppo.make_grid([r["prompt"] for r in rows], [r["response"] for r in rows], PAD, "cpu")
        lp0, v0 = ppo.token_logprobs(policy, g0, 1.0)[0], ppo.grid_values(critic, g0)
    for b, r in enumerate(rows):
        n = len(r["response"])
        r["old_lp"], r["value"] = lp0[b, :n].tolist(), v0[b, :n].tolist()
    g = ppo.build_batch(cfg, rows, SimpleNamespace(pad_id=PAD, device="cpu"))
    m = g["mask"]
    lp = ppo.token_logprobs(policy, g, 1.0)[0]
    pg = (ppo.policy_loss(lp, g["old_lp"], g["adv"], cfg.clip)[0] * m).sum() / m.sum()
    vf = (ppo.value_loss(ppo.grid_values(critic, g), g["value"], g["returns"], cfg.value_clip) * m).sum() / m.sum()
    want_p = torch.autograd.grad(pg, list(policy.parameters()))
    want_c = torch.autograd.grad(vf, list(critic.parameters()))
    before = [p.detach().clone() for p in [*policy.parameters(), *critic.parameters()]]
    M = ppo.Models(device="cpu", amp=contextlib.nullcontext(), pad_id=PAD, tok_dir="", policy=policy, critic=critic,
                   ref=policy, rm=None, policy_step=policy, critic_step=critic,
                   opt_policy=torch.optim.SGD(policy.parameters(), lr=cfg.lr),
                   opt_critic=torch.optim.SGD(critic.parameters(), lr=cfg.critic_lr))
    stats = ppo.update(cfg, 0, g, M, shepherd.Dist())
    lr_p, lr_c = M.opt_policy.param_groups[0]["lr"], M.opt_critic.param_groups[0]["lr"]
    assert lr_p > 0 and lr_c > 0
    after = [*policy.parameters(), *critic.parameters()]
    for p0, p1, grad, lr in zip(before, after, [*want_p, *want_c], [lr_p] * len(want_p) + [lr_c] * len(want_c)):
        torch.testing.assert_close(p1.detach(), p0 - lr * grad, atol=1e-6, rtol=1e-4)
    assert stats["loss/value"] == pytest.approx(vf.item(), rel=1e-5)
    assert any(grad.abs().sum() > 0 for grad in want_c[:-2])  # the backbone's gradients were not all zero


def test_logprobs_and_step_probs_read_the_right_positions(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
    model = Transformer(cfg).eval()
    g = grid()
    with torch.no_grad():
        lp, ent = ppo.token_logprobs(model, g, temperature=0.7, entropy=True)
        for b, (P, resp) in enumerate([(3, [6, TAG, 7, TAG, EOS]), (2, [7, TAG, 6])]):  # each row alone, unpadded
            logp = (model(g["ids"][b:b + 1, :P + len(resp)])[0] / 0.7).log_softmax(-1)
            want = [logp[P - 1 + k, t].item() for k, t in enumerate(resp)]
            assert lp[b, :len(resp)].tolist() == pytest.approx(want, abs=1e-5)
            assert ent[b, 0].item() == pytest.approx(-(logp[P - 1].exp() * logp[P - 1]).sum().item(), abs=1e-5)
        head = PRMHead(TAG, 9, 10)
        p = ppo.step_probs(model, g, head)
        tags = [p[b][g["act"][b] == TAG].tolist() for b in range(2)]
        assert tags == [pytest.approx(s, abs=1e-6) for s in step_scores(model, g["ids"], head)]  # where the PRM trains


def test_oracle_step_rewards_follow_the_exact_truth(tmp_path):
    synthetic.build_tokenizer(tmp_path)
    tok = Tokenizer(tmp_path)
    tag = PRMHead.from_tokenizer(tok).tag
    problem = synthetic.load("test", 3)[2]
    steps = data.split_steps(problem.meta["solution"])
    texts = [data.join_steps(steps), data.join_steps(steps[:1] + ["1 + 1 = 2"] + steps[2:])]
    untagged = data.join_steps(steps)[:-len(" " + data.STEP_TAG)]  # the answer step written without its tag
    empty = data.join_steps(steps[:1]) + " " + data.STEP_TAG + "\n" + data.join_steps(steps[1:])  # an empty step
    responses = [tok.encode(t, bos=False) + [tok.eos_id] for t in texts + [untagged, empty]]
    rs = [ppo.response_steps(r, tag, True, tok.decode) for r in responses]
    assert [len(x) for x in rs] == [len(steps)] * 3 + [len(steps) + 1]
    p = ppo.oracle_step_probs(synthetic, [problem] * 4, responses, rs, tok.decode, "cpu")
    at_ends = [p[b][[last for _, last in rs[b]]].tolist() for b in range(4)]
    n = len(steps)
    assert at_ends[:3] == [[1.0] * n, [1.0] + [0.0] * (n - 1), [1.0] * n]  # the untagged answer is judged too
    assert at_ends[3] == [1.0, 0.0] + [0.0] * (n - 1)  # the empty step is false, and so is all after it: no shift
    # the loophole: with the oracle, leaving the final tag off earns exactly what writing it earns
    ends = [ppo.end_mask([x], (1, len(r))) for x, r in zip(rs, responses)]
    total = [ppo.score_rewards(e, p[b:b + 1, :e.shape[1]], torch.ones_like(e), torch.tensor([True]), kind="prm",
                               center=0.5, penalty=-1.0).sum().item() for b, e in enumerate(ends)]
    assert total[2] == total[0] == 0.5 * n
    assert p[~ppo.end_mask(rs, p.shape)].abs().sum() == 0


def test_a_tag_of_the_policys_own_is_read_back_as_ki(tmp_path):
    """--tag <step>: a response's steps end at the policy's own tag, and its text reaches graders in ки's format."""
    synthetic.build_tokenizer(tmp_path)
    tok = Tokenizer(tmp_path)
    tok.add_token("<step>")
    head = shepherd.prm_head(tok, "<step>")
    assert ppo.parse_args(["--tag", "<step>"]).tag == "<step>" and "tag" not in ppo.NOT_ALGORITHM
    text = "3 * 4 = 12 <step>\nThe answer is: 12 <step>"
    ids = tok.encode(text, bos=False) + [tok.eos_id]
    steps = ppo.response_steps(ids, head.tag, True, lambda r: ppo.response_text(tok, head, r))
    assert [last for _, last in steps] == [i for i, x in enumerate(ids) if x == head.tag[0]]
    assert ppo.response_text(tok, head, ids) == "3 * 4 = 12 ки\nThe answer is: 12 ки"
    assert synthetic.grade(ppo.response_text(tok, head, ids), "12") and not synthetic.grade(tok.decode(ids), "12")


@pytest.mark.skipif(not (Path(synthetic.POLICY_DIR) / "config.json").exists(), reason="the tiny policy is not built")
def test_the_default_reward_model_is_built_by_the_projects_label_and_train(tmp_path, monkeypatch):
    """No --reward-model: label the policy's solutions, fine-tune a PRM from the verifier base (label.cmd_label
    and cmd_train, the commands' own code and checks), cache it; a second run reuses it without building anything."""
    monkeypatch.setattr(ppo, "ROOT", tmp_path)
    cfg = ppo.parse_args(["--rm-problems", "2", "--rm-steps", "2"])
    path = Path(ppo.ensure_reward_model(cfg, synthetic.POLICY_DIR, shepherd.Dist()))
    assert path.parent.parent == tmp_path / "runs" / "ppo-rm" and path.name == "prm"
    assert json.loads((path / "trainer_state.json").read_text())["step"] == 2
    records = [json.loads(x) for x in (path.parent / "labels.jsonl").read_text().splitlines()]
    assert {r["problem_id"] for r in records} == {p.id for p in synthetic.load("train")[:2]}
    r = synthetic.RM_RECIPE  # the world's recipe, as bench/reproduce.py runs it
    assert len(records) == 2 * r["solutions"]
    assert all(len(x["rollout_correct"][0]) == r["completions"] for x in records if len(x["steps"]) > 1)
    assert json.loads((path / "config.json").read_text())["tie_word_embeddings"] is False  # the verifier base's
    for cmd in ("cmd_label", "cmd_train"):
        monkeypatch.setattr(ppo, cmd, lambda *a, **k: pytest.fail("rebuilt a cached reward model"))
    assert ppo.ensure_reward_model(cfg, synthetic.POLICY_DIR, shepherd.Dist()) == str(path)


def test_temperature_zero_is_refused():
    with pytest.raises(SystemExit):
        ppo.parse_args(["--temperature", "0"])


def test_a_task_without_a_policy_needs_one(capsys):
    assert ppo.main(["--task", "gsm8k", "--quiet"]) == 2
    assert capsys.readouterr().err == "error: --policy is required for task 'gsm8k'\n"


def test_oracle_reward_refuses_a_task_without_step_truth(capsys):
    assert ppo.main(["--task", "gsm8k", "--reward", "truth", "--quiet"]) == 2
    assert capsys.readouterr().err == "error: --reward truth needs a task that knows each step's truth (synthetic); gsm8k does not\n"


# ----------------------------------------------------------------------------------------------------------------
# A tiny world: an 11-token vocabulary, a random policy, and a hand-made "PRM" whose p(+) at a tag grows with the
# share of the token "1" in everything before it (uniform attention). The policy can raise it by writing more 1s.


def build_tiny_world(root: Path) -> tuple[str, str]:
    tok_dir = root / "tok"
    real = synthetic._vocab
    synthetic._vocab = lambda: VOCAB
    try:
        synthetic.build_tokenizer(tok_dir)
    finally:
        synthetic._vocab = real
    tok = Tokenizer(tok_dir)
    assert PRMHead.from_tokenizer(tok) == PRMHead(TAG, 9, 10) and (tok.eos_id, tok.pad_id) == (EOS, PAD)
    V = len(VOCAB)
    torch.manual_seed(0)
    pc = ModelConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                     num_key_value_heads=1, max_position_embeddings=160, tie_word_embeddings=True, pad_token_id=PAD)
    policy = Transformer(pc)
    for p in policy.parameters():
        if p.dim() == 2:
            torch.nn.init.normal_(p, std=0.02)  # near-uniform over the 11 tokens: tags and 1s are common
    policy.save_pretrained(root / "policy", tokenizer_dir=tok_dir)
    H = 16
    rc = ModelConfig(vocab_size=V, hidden_size=H, intermediate_size=4, num_hidden_layers=1, num_attention_heads=1,
                     num_key_value_heads=1, max_position_embeddings=160, tie_word_embeddings=False, pad_token_id=PAD)
    rm = Transformer(rc)
    with torch.no_grad():
        for p in rm.parameters():
            p.zero_()
        rm.model.embed_tokens.weight[:, :V] = torch.eye(V)  # one-hot embeddings
        for n in ("input_layernorm", "post_attention_layernorm"):
            getattr(rm.model.layers[0], n).weight.fill_(1)
        rm.model.norm.weight.fill_(1)
        attn = rm.model.layers[0].self_attn  # q = k = 0: uniform attention over the prefix; v, o: identity
        attn.v_proj.weight.copy_(torch.eye(H))
        attn.o_proj.weight.copy_(torch.eye(H))
        rm.lm_head.weight[9, 6] = 12.0  # '+' reads the share of "1"
        rm.lm_head.weight[10, 0] = 0.5  # '-' reads the share of <unk> (the prompt's words)
    rm.save_pretrained(root / "prm", tokenizer_dir=tok_dir)
    return str(root / "policy"), str(root / "prm")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_tiny_world(tmp_path_factory.mktemp("world"))


def args(world, out, *extra):
    policy, prm = world
    return ["--policy", policy, "--reward-model", prm, "--out", str(out), "--max-new-tokens", "16",
            "--batch-size", "16", "--minibatch-size", "8", "--micro-batch", "4", "--epochs", "2", "--lr", "3e-3",
            "--critic-lr", "3e-3", "--warmup", "2", "--no-answer-penalty", "0", "--eval-problems", "0",
            "--test-problems", "0", "--quiet", *extra]


def params(folder):
    from safetensors.torch import load_file
    return {**load_file(str(folder / "policy" / "model.safetensors")),
            **{"critic." + k: v for k, v in load_file(str(folder / "critic" / "model.safetensors")).items()},
            **{"head." + k: v for k, v in load_file(str(folder / "critic" / "value_head.safetensors")).items()}}


def test_two_gloo_processes_make_the_one_process_update(world, tmp_path):
    """The same run as one process, as two data-parallel processes (DDP), and as two FSDP2 processes (every model
    sharded): rollouts, minibatches and gradients are the same, so the parameters after the update are too."""
    assert ppo.main(args(world, tmp_path / "one", "--iterations", "1")) == 0
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    # four rows per rank in micro-batches of 1: gradients accumulate unsynchronised, then are reduced once
    for name, extra in (("ddp", ["--micro-batch", "1"]), ("fsdp", ["--fsdp", "--micro-batch", "1"])):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "ppo.py",
               *args(world, tmp_path / name, "--iterations", "1", *extra)]
        run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
    one = params(tmp_path / "one" / "checkpoint")
    start = params_of_start(world)
    moved = max((one[k] - start[k]).abs().max().item() for k in start)
    for name in ("ddp", "fsdp"):
        two = params(tmp_path / name / "checkpoint")
        diff = max((one[k] - two[k]).abs().max().item() for k in one)
        print(f"largest parameter change in the update {moved:.2e}; largest difference one vs two processes ({name}) {diff:.2e}")
        assert moved > 1e-3 and diff < 1e-6
        logs = [json.loads((tmp_path / x / "log.jsonl").read_text().splitlines()[-1]) for x in ("one", name)]
        for key in ("reward/score", "policy/clipfrac", "loss/value", "policy/approx_kl"):
            assert logs[0][key] == pytest.approx(logs[1][key], abs=1e-6), key


def params_of_start(world):
    from safetensors.torch import load_file
    policy, prm = world
    return {k: v for k, v in load_file(str(Path(policy) / "model.safetensors")).items()}


def test_resume_continues_the_run_exactly(world, tmp_path, monkeypatch, capsys):
    a = args(world, tmp_path / "a", "--iterations", "2", "--save-every", "1")
    b = args(world, tmp_path / "b", "--iterations", "2", "--save-every", "1")
    assert ppo.main(a) == 0
    real = ppo.save_checkpoint

    def save_then_die(*x, **kw):  # the first checkpoint lands, then the run "crashes"
        real(*x, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(ppo, "save_checkpoint", save_then_die)
    assert ppo.main(b) == 130  # Ctrl-C: one line, exit 130
    assert capsys.readouterr().err.strip() == "interrupted; the same command resumes from the last checkpoint"
    monkeypatch.setattr(ppo, "save_checkpoint", real)
    assert torch.load(tmp_path / "b" / "checkpoint" / "trainer_state.pt", weights_only=True)["iteration"] == 1
    with open(tmp_path / "b" / "log.jsonl", "a") as f:  # as if it had crashed after logging iteration 2, unsaved
        f.write(json.dumps({"iteration": 2, "reward/score": 123.0}) + "\n")
    assert ppo.main(b + ["--lr", "1e-3"]) == 2  # a checkpoint made with another learning rate is not resumed
    assert re.fullmatch(r"error: .*checkpoint: made with other settings \(--lr 0.003 -> 0.001\).*--restart.*\n",
                        capsys.readouterr().err)
    head = tmp_path / "b" / "checkpoint" / "critic" / "value_head.safetensors"
    head.rename(tmp_path / "head")  # a checkpoint missing a part is refused before anything runs
    assert ppo.main(b) == 2
    assert capsys.readouterr().err == f"error: {head.parent}: no value_head.safetensors; pass --restart\n"
    (tmp_path / "head").rename(head)
    assert ppo.main(b) == 0
    pa, pb = params(tmp_path / "a" / "checkpoint"), params(tmp_path / "b" / "checkpoint")
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k  # bit-identical: same rollouts, shuffles, optimizer state, schedule
    log = lambda x: [json.loads(s) for s in (tmp_path / x / "log.jsonl").read_text().splitlines()]  # noqa: E731
    assert [r["reward/score"] for r in log("a")] == [r["reward/score"] for r in log("b")]  # no repeated iteration
    assert [r["iteration"] for r in log("b")] == [1, 2]
    assert ppo.main(b + ["--restart", "--iterations", "1"]) == 0
    assert [r["iteration"] for r in log("b")] == [1]  # --restart starts a new log, not a second run appended


def test_short_run_raises_the_mean_prm_reward(world, tmp_path):
    assert ppo.main(args(world, tmp_path / "run", "--iterations", "8", "--batch-size", "64", "--minibatch-size", "16",
                         "--lr", "5e-3")) == 0
    log = [json.loads(s) for s in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    p = [r["reward/mean_step_p"] for r in log]
    score = [r["reward/score"] for r in log]
    print("mean step p(+):", " ".join(f"{x:.3f}" for x in p))
    print("PRM reward per response:", " ".join(f"{x:.3f}" for x in score))
    print("steps per response:", " ".join(f"{r['rollout/steps']:.2f}" for r in log))
    # measured (seeds 0, 1, 2): p(+) 0.38 0.63 ... 0.74 0.73; 0.39 0.56 ... 0.65 0.66; 0.44 0.36 ... 0.77 0.63
    assert sum(p[-3:]) / 3 > sum(p[:2]) / 2 + 0.1
    assert sum(score[-3:]) / 3 > sum(score[:2]) / 2
    assert all(math.isfinite(r["loss/value"]) and r["check/sampler_logprob_err"] < 1e-4 for r in log)
    assert all(r["reward/total"] == pytest.approx(r["reward/score"] - 0.04 * r["policy/kl"], abs=1e-4) for r in log)
    assert log[0]["policy/kl"] == 0 and min(r["policy/kl"] for r in log[1:]) > 0  # pi moved away from pi_ref
    # the critic learned: its head left zero and its backbone left the reward model it started from
    from safetensors.torch import load_file
    ck, rm = params(tmp_path / "run" / "checkpoint"), load_file(str(Path(world[1]) / "model.safetensors"))
    assert ck["head.weight"].abs().sum() > 0 and log[0]["value/explained_var"] == 0
    assert max((ck["critic." + k] - v).abs().max().item() for k, v in rm.items() if "critic." + k in ck) > 1e-3


@pytest.mark.parametrize("reward", ["prm", "orm", "truth"])
def test_rollout_penalises_exactly_the_responses_without_an_answer(world, tmp_path, reward):
    """The same rollouts (same seeds) with and without --no-answer-penalty: the scores differ by the penalty on the
    last token of each response the task finds no answer in, and nowhere else."""
    got = {}
    for penalty in ("0", "-1"):
        cfg = ppo.parse_args(args(world, tmp_path / penalty, "--reward", reward, "--temperature", "0.7",
                                  "--max-new-tokens", "24", "--no-answer-penalty", penalty))
        M, _ = ppo.setup(cfg, shepherd.Dist())
        problems = M.task.load("train")[:12]  # the tiny vocabulary cannot spell "The answer is": none has an answer
        got[penalty] = ppo.rollout(cfg, 0, problems, M, Sampler(M.policy, max_batch=16), ppo.Timer())
    for a, b in zip(got["0"], got["-1"]):
        assert a["response"] == b["response"] and a["answered"] == b["answered"]
        diff = [y - x for x, y in zip(a["score"], b["score"])]
        want = [0.0] * (len(diff) - 1) + [0.0 if a["answered"] else -1.0]
        assert diff == pytest.approx(want, abs=1e-6)
    assert not any(r["answered"] for r in got["0"])


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(world, tmp_path, monkeypatch):
    real, calls = ppo.step_probs, []

    def nan_on_second_iteration(*a):
        calls.append(1)
        p = real(*a)
        return p * float("nan") if len(calls) == 2 else p

    monkeypatch.setattr(ppo, "step_probs", nan_on_second_iteration)
    with pytest.raises(SystemExit, match="non-finite rewards.*last good checkpoint is .*checkpoint"):
        ppo.main(args(world, tmp_path / "run", "--iterations", "3", "--save-every", "1"))
    assert torch.load(tmp_path / "run" / "checkpoint" / "trainer_state.pt", weights_only=True)["iteration"] == 1
    calls.clear()
    calls.append(1)  # NaN in the very first iteration: there is no good checkpoint to point to
    with pytest.raises(SystemExit, match="non-finite rewards.*; no checkpoint was written yet$"):
        ppo.main(args(world, tmp_path / "run0" / "deep", "--iterations", "3", "--save-every", "1"))
    assert not (tmp_path / "run0").exists()  # nothing saved: no log, no folder left behind


def test_under_autocast_the_reference_computes_exactly_as_the_policy(world, tmp_path, monkeypatch):
    """GPU precision on a CPU: bf16 autocast around every forward, as ppo.py runs on CUDA without FSDP. The reference
    must be the policy's exact copy (fp32 weights, the same autocast), so the KL at iteration 0 is 0 to the bit (a
    bf16 copy of the weights, the old setup, gives a spurious KL); the sampler samples from exactly pi_old."""
    monkeypatch.setattr(ppo, "precision", lambda cfg, device: (torch.bfloat16, torch.autocast("cpu", dtype=torch.bfloat16)))
    cfg = ppo.parse_args(args(world, tmp_path / "amp", "--temperature", "0.7"))
    M, _ = ppo.setup(cfg, shepherd.Dist())
    assert next(M.ref.parameters()).dtype == next(M.policy.parameters()).dtype == torch.float32
    rows = ppo.rollout(cfg, 0, M.task.load("train")[:8], M, Sampler(M.policy, max_batch=16), ppo.Timer())
    assert all(r["old_lp"] == r["ref_lp"] for r in rows)
    # and the sampler runs under the same autocast: its log-probs are pi_old's (fp32 sampling is 1e-3 off)
    assert max(abs(a - b) for r in rows for a, b in zip(r["sampler_lp"], r["old_lp"])) < 1e-5
    bf16 = M.ref.to(torch.bfloat16)  # what a bf16 reference computes under the same autocast
    g = ppo.make_grid([r["prompt"] for r in rows], [r["response"] for r in rows], M.pad_id, M.device)
    with M.amp:
        kl = (ppo.token_logprobs(M.policy, g, 0.7)[0] - ppo.token_logprobs(bf16, g, 0.7)[0])[g["mask"]]
    assert kl.abs().max() > 1e-4


def test_switches_take_a_no_form_on_both_command_lines():
    """add_flags makes every bool a --x / --no-x switch (ppo.py's switches always had the --no- form)."""
    assert ppo.parse_args(["--fsdp", "--no-fsdp"]).fsdp is False and ppo.parse_args(["--quiet"]).quiet is True
    ns = shepherd.build_parser().parse_args(["train", "--out", "o", "--untie", "--no-pack"])
    assert ns.untie is True and ns.pack is False and ns.restart is False
