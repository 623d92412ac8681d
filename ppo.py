"""Step-by-step PPO over process-reward-model step rewards (Math-Shepherd §3.5).

    torchrun ppo.py                     # synthetic world: tiny policy + a PRM built and cached here
    torchrun --nproc_per_node 2 ppo.py  # data-parallel (gloo on CPU, NCCL on GPU): the same run
    torchrun ppo.py --reward orm        # the paper's ORM-PPO baseline: one score per response
    torchrun --nproc_per_node 8 ppo.py --task gsm8k --policy SFT_DIR --reward-model PRM_DIR --fsdp

Math-Shepherd §3.5 rewards a sampled solution at the end of each step with the PRM's score of that
step; PPO (Schulman et al. 2017) with GAE (Schulman et al. 2016) turns the rewards into updates.
The paper fixes the KL coefficient (0.04), the learning rate (1e-7 cosine to 1e-8 for Mistral-7B)
and the length (512); epochs, batches, GAE and the value model are ours, said where they happen.

The token grid, used everywhere: a batch is right-padded `ids` (B, S) = prompt + response +
padding. The response grid (B, R) has one column per response token k of a row: `act` is the
token, `pos` the position whose logits predict it (prompt_len - 1 + k, the state before the
action), `mask` whether it exists. Log-probs, values, rewards and advantages all live on this
grid: padding is a False in `mask`, never a test on a token id.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypedDict

import torch
import torch.nn as nn

import data
from data import synthetic
import shepherd
from label import LabelConfig, cmd_label
from model import DTYPES, PRMHead, Tokenizer, Transformer, step_logits, swap_in, tag_positions
from sampler import Sampler
from shepherd import (COUNT, FINITE, FRACTION, NONNEG, POSITIVE, RATE, Common, Dist, InputError,
                      barrier, flag, init_distributed, seed_for)
from train import TrainConfig, adamw, cmd_train, evaluate_policy, lr_at, open_log

ROOT = Path(__file__).resolve().parent


@dataclass
class Config(Common):
    """Step-by-step PPO's settings (shepherd.Common adds --tag, --seed, --device)."""
    task: str = flag("synthetic", "task (data.TASKS): the prompts and the grader")
    policy: str = flag("", "SFT policy checkpoint (default: the synthetic world's tiny policy); "
                       "also the frozen reference")
    reward: str = flag("prm", "prm: the PRM's p(+) at every step's tag (step-by-step PPO); orm: "
                       "one outcome score at the end; truth: exact step labels as p(+), an oracle "
                       "PRM (tasks with step_truth: diagnosis)", choices=["prm", "orm", "truth"])
    reward_model: str = flag("", "reward model checkpoint; default: built (labels from the "
                             "policy, fine-tuned from --rm-base) and cached in runs/ppo-rm/")
    out: str = flag("runs/ppo", "folder for checkpoint/ (Hugging Face layout), log.jsonl, "
                    "eval.json")
    restart: bool = flag(False, "ignore a checkpoint in --out")
    iterations: int = flag(30, "rollout + update rounds", type=POSITIVE)
    batch_size: int = flag(128, "prompts per iteration (global), one sampled response each",
                           type=POSITIVE)
    max_new_tokens: int = flag(128, "response length limit (the paper: 512 tokens in all)",
                               type=POSITIVE)
    temperature: float = flag(1.0, "the policy being trained IS softmax(logits / temperature), "
                              "in sampling and training", type=RATE)
    kl_coef: float = flag(0.04, "beta of the per-token KL penalty to the reference "
                          "(Math-Shepherd: 0.04)", type=NONNEG)
    reward_center: float = flag(0.5, "subtracted from every reward-model score (see "
                                "score_rewards)", type=FRACTION)
    no_answer_penalty: float = flag(-1.0, "added at the last token of a response that ends "
                                    "without a final answer", type=FINITE)
    epochs: int = flag(4, "PPO epochs over each batch of rollouts", type=POSITIVE)
    minibatch_size: int = flag(64, "rows per optimizer step (global): few, large steps; rewards "
                               "are noisy", type=POSITIVE)
    micro_batch: int = flag(16, "rows per forward/backward on one rank (gradient accumulation)",
                            type=POSITIVE)
    clip: float = flag(0.2, "PPO ratio clip epsilon", type=RATE)
    value_clip: float = flag(0.2, "value clip: a new value may move this far from the rollout's",
                             type=RATE)
    gamma: float = flag(1.0, "discount (GAE)", type=FRACTION)
    lam: float = flag(0.95, "GAE lambda", type=FRACTION)
    lr: float = flag(3e-6, "policy learning rate (Mistral-7B in the paper: 1e-7)", type=RATE)
    critic_lr: float = flag(2e-4, "value model learning rate", type=RATE)
    min_lr_ratio: float = flag(0.1, "cosine decay to lr x this (the paper: 1e-7 -> 1e-8)",
                               type=FRACTION)
    warmup: int = flag(10, "optimizer steps of linear warmup", type=COUNT)
    weight_decay: float = flag(0.0, "AdamW weight decay (matrices only)", type=NONNEG)
    max_grad_norm: float = flag(1.0, "gradient-norm clipping, per model", type=RATE)
    critic_init: str = flag("reward", "value backbone from the reward model or the policy",
                            choices=["reward", "policy"])
    eval_every: int = flag(10, "held-out greedy accuracy every this many iterations (and at the "
                           "end)", type=POSITIVE)
    eval_problems: int = flag(500, "held-out problems for it (the task's val split; test where it "
                              "has none)", type=COUNT)
    test_problems: int = flag(500, "test problems for the final greedy accuracy (0: none)",
                              type=COUNT)
    save_every: int = flag(10, "checkpoint every this many iterations (and at the end)",
                           type=POSITIVE)
    rm_problems: int = flag(synthetic.RM_RECIPE["problems"], "reward-model build: problems to "
                            "label (synthetic.RM_RECIPE's solutions and completions each)",
                            type=POSITIVE)
    rm_steps: int = flag(synthetic.RM_RECIPE["steps"], "reward-model build: training steps",
                         type=POSITIVE)
    rm_base: str = flag("", "reward-model build: the base it is fine-tuned from (default: the "
                        "synthetic world's verifier base with the default policy, else the policy)")
    dtype: str = flag("auto", "float32 | bfloat16 for the frozen reward model and FSDP compute "
                      "(auto: bf16 on CUDA)")
    fsdp: bool = flag(False, "shard every model with FSDP2 (fully_shard) instead of replicating "
                      "it (7B scale)")
    quiet: bool = flag(False, "no progress bar")


def parse_args(argv=None) -> Config:
    p = shepherd.Parser(prog="ppo.py", description=__doc__,
                        formatter_class=shepherd.HelpFormatter)
    shepherd.add_flags(p, Config)
    cfg = Config(**vars(p.parse_args(argv)))
    if cfg.dtype not in ("auto", *DTYPES):
        p.error(f"--dtype is auto, float32 or bfloat16, not {cfg.dtype!r}")
    return cfg


# a resume may change these (where and how much to log); all else must match its checkpoint
NOT_ALGORITHM = {"out", "restart", "quiet", "device", "eval_every", "eval_problems",
                 "test_problems", "save_every"}


# --------------------------------------------------------------------------------------------------
# The models: policy and value model (trained), reference policy and reward model (frozen)


class ValueModel(nn.Module):
    """V(prefix) = a scalar head on a transformer's last hidden state (backbone saved in HF layout).

    The backbone starts from the reward model by default, as InstructGPT's value function does: a
    PRM's hidden state at a prefix already encodes "can this still reach the answer". The head
    starts at zero, so the first advantages are plain rewards-to-go and the first optimizer step
    moves the head alone (a zero head passes no gradient back), the backbone from the second on."""

    def __init__(self, backbone: Transformer):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.config.hidden_size, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        # an untied LM head is unused: frozen, so no rank waits on its gradients
        if not backbone.config.tie_word_embeddings:
            backbone.lm_head.weight.requires_grad_(False)

    def forward(self, ids):
        # (B, S); sum the size-1 dim rather than squeeze: FSDP2 warns on a module returning a view
        return self.head(self.backbone(ids, return_hidden=True)).float().sum(-1)


def ensure_reward_model(cfg: Config, policy_dir: str, d: Dist) -> str:
    """--reward-model, or one built with shepherd.py and cached: label the policy's solutions
    (Math-Shepherd §3.3, hard estimation), then fine-tune a PRM (Eq. 2) or an ORM (Eq. 1) from the
    verifier base on the same labels, with the world's recipe (synthetic.RM_RECIPE, as
    bench/reproduce.py). Under torchrun every rank takes part."""
    if cfg.reward_model:
        return cfg.reward_model
    base = cfg.rm_base or policy_dir
    if not cfg.rm_base and Path(policy_dir).resolve() == Path(synthetic.POLICY_DIR).resolve() \
            and (Path(synthetic.VERIFIER_DIR) / "config.json").exists():
        base = synthetic.VERIFIER_DIR  # as in the paper: a stronger verifier than the policy
    r = synthetic.RM_RECIPE
    w = next(Path(policy_dir).glob("model*.safetensors*"))  # a retrained policy: a new cache key
    wb = next(Path(base).glob("model*.safetensors*"))
    key = seed_for(Path(policy_dir).resolve(), w.stat().st_size, w.stat().st_mtime_ns,
                   Path(base).resolve(), wb.stat().st_size, wb.stat().st_mtime_ns,
                   cfg.rm_problems, cfg.rm_steps, cfg.tag, sorted(r.items()))
    # one cache per policy, not per seed
    cache = ROOT / "runs" / "ppo-rm" / f"{Path(policy_dir).name}-{key % 16**8:08x}"
    kind = "orm" if cfg.reward == "orm" else "prm"  # truth: the PRM still starts the critic
    path = cache / kind
    if not (path / "trainer_state.json").exists():  # shepherd's mark of a finished training
        if d.main:
            print(f"building the {kind.upper()} in {path} (once; cached)", flush=True)
        labels, done = cache / "labels.jsonl", cache / "labels.done"  # serves the PRM and the ORM
        if not done.exists():  # resumable
            cmd_label(LabelConfig(
                model=policy_dir, tag=cfg.tag, limit=cfg.rm_problems, num_solutions=r["solutions"],
                num_completions=r["completions"], max_new_tokens=96, seed=0, out=str(labels)))
            if d.main:
                done.touch()
        cmd_train(TrainConfig(
            objective=kind, tag=cfg.tag, data=str(labels), model=base, out=str(path),
            steps=cfg.rm_steps, batch_size=r["batch"], lr=r["lr"],
            warmup=max(1, cfg.rm_steps // 20), eval_every=cfg.rm_steps, heldout=0.05, seed=0))
    barrier(d)
    return str(path)


def shard(model: nn.Module, cfg: Config, dtype: torch.dtype):
    """FSDP2: each decoder layer its own unit (weights gathered just for its forward/backward), then
    the root. Parameters are stored fp32 and computed in `dtype`; gradients are reduced in fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mp = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    for layer in getattr(model, "backbone", model).model.layers:
        fully_shard(layer, mp_policy=mp)
    # the root unit (embeddings, final norm, LM head, value head) stays gathered after forward, so
    # the LM head may be used outside forward (token_logprobs, step_logits) as in a plain module
    fully_shard(model, mp_policy=mp)


@contextlib.contextmanager
def full_params(model: nn.Module, cfg: Config):
    """Generation under FSDP: gather every unit's weights once, until the end (the sampler calls the
    model hundreds of times: each would all-gather, and ranks of different lengths would hang)."""
    if not cfg.fsdp:
        yield
        return
    from torch.distributed.fsdp import FSDPModule
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in units:
        m.unshard()
        if m is not model:  # the root already keeps its weights after forward
            m.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for m in units:
            if m is not model:
                m.set_reshard_after_forward(True, recurse=False)
            m.reshard()


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DDP keeps the model in .module; FSDP2 shards in place


# --------------------------------------------------------------------------------------------------
# The token grid


class Grid(TypedDict, total=False):
    """A batch on the token grid (module docstring): (B, S) ids, the rest (B, R)."""
    ids: torch.Tensor  # prompt + response, right-padded
    act: torch.Tensor  # response token k
    pos: torch.Tensor  # the position whose logits predict it
    mask: torch.Tensor  # whether it exists
    # build_batch adds the rollout's tensors and what PPO computes from them
    old_lp: torch.Tensor  # log pi_old(act)
    ref_lp: torch.Tensor  # log pi_ref(act)
    value: torch.Tensor  # V_old(s_k)
    score: torch.Tensor  # the reward model's part of the reward (score_rewards)
    rewards: torch.Tensor  # score - beta KL (total_rewards)
    kl: torch.Tensor  # log pi_old - log pi_ref
    adv: torch.Tensor  # whitened GAE advantages
    returns: torch.Tensor  # the value targets


def pad_rows(rows: list[list], value, dtype, device, width: int | None = None) -> torch.Tensor:
    width = width or max(len(r) for r in rows)
    return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows], dtype=dtype,
                        device=device)


def make_grid(prompts: list[list[int]], responses: list[list[int]], pad_id: int, device) -> Grid:
    """ids, act, pos and mask. Masks come from lengths, never ids == pad: the pad id need only
    differ from EOS and the tag."""
    P = torch.tensor([len(p) for p in prompts], device=device)
    L = torch.tensor([len(r) for r in responses], device=device)
    k = torch.arange(int(L.max()), device=device)
    mask = k[None] < L[:, None]
    pos = torch.where(mask, P[:, None] - 1 + k[None], P[:, None] - 1)  # padding: a real position
    ids = pad_rows([p + r for p, r in zip(prompts, responses)], pad_id, torch.long, device)
    return Grid(ids=ids, act=pad_rows(responses, pad_id, torch.long, device), pos=pos, mask=mask)


def token_logprobs(model: nn.Module, g: Grid, temperature: float, entropy: bool = False):
    """log pi(act_k | prefix) on the response grid (B, R), from ONE forward over prompt + response,
    and the policy's entropy there. Only the hidden states at grid positions meet the LM head."""
    hidden = model(g["ids"], return_hidden=True)
    h = hidden.gather(1, g["pos"][..., None].expand(-1, -1, hidden.shape[-1]))
    logp = (unwrap(model).lm_head(h).float() / temperature).log_softmax(-1)
    lp = logp.gather(-1, g["act"][..., None]).squeeze(-1)
    ent = -(logp.exp() * logp).sum(-1).detach() if entropy else None  # logged only
    return lp, ent


def step_probs(rm: nn.Module, g: Grid, head: PRMHead) -> torch.Tensor:
    """The reward model's p(+) = softmax([l+, l-])[0] read AT each response token (its own position,
    pos + 1): at a tag, that step's score, where shepherd.py trained it (model.step_logits)."""
    return step_logits(rm, g["ids"], head).softmax(-1)[..., 0].gather(1, g["pos"] + 1)


def grid_values(critic: nn.Module, g: Grid) -> torch.Tensor:
    return critic(g["ids"]).gather(1, g["pos"])  # V(s_k): the prefix before response token k


# --------------------------------------------------------------------------------------------------
# Rewards (Math-Shepherd §3.5)


def response_steps(tokens: list[int], tag, stopped: bool, decode) -> list[tuple[int, int]]:
    """A response's steps as (first, last) token indices: the tokens up to and including each tag
    (its last token: model.tag_positions, where the PRM was trained), then the untagged tail (the
    stop token excluded) if it holds any text. The one definition of a step that rewards, the
    oracle and the logged counts share: an answer written without its tag is still a scored step."""
    steps, first = [], 0
    for k in tag_positions(tokens, tag):
        steps.append((first, k))
        first = k + 1
    end = len(tokens) - 1 if stopped else len(tokens)
    if first < end and decode(tokens[first:end]).strip():
        steps.append((first, end - 1))
    return steps


def response_text(tok: Tokenizer, head: PRMHead, ids) -> str:
    """What the policy wrote, as graders and step truth read it (its --tag written back as ки)."""
    return data.from_model_tag(tok.decode(ids), head.text)


def end_mask(steps: list[list[tuple[int, int]]], shape) -> torch.Tensor:
    """(B, R) True at each step's last token: where its reward goes."""
    ends = torch.zeros(shape, dtype=torch.bool)
    for b, row in enumerate(steps):
        for _, last in row:
            ends[b, last] = True
    return ends


def reward_model_head(tok: Tokenizer, rm_tok: Tokenizer, tag: str) -> PRMHead:
    """The reward model's head in its own tokens: the policy's (same tokenizer), or those with the
    tag one token of its own (train --add-tag-token: the policy's vocabulary plus ' ' + tag)."""
    head = shepherd.prm_head(rm_tok, tag)
    mine, its = tok.tok.get_vocab(), rm_tok.tok.get_vocab()
    extra = {k for k, v in its.items() if mine.get(k) != v}
    added = (extra == {" " + tag} and len(its) == len(mine) + 1
             and len(shepherd.prm_head(tok, tag).tag) > 1)
    if not added or (tok.prefix, tok.suffix) != (rm_tok.prefix, rm_tok.suffix):
        shepherd.same_tokenizer(tok, rm_tok, "the reward model")
    return head


def rm_view(ids: list[int], tag, rm_tag) -> tuple[list[int], list[int]]:
    """Policy tokens as the reward model reads them (each tag written as the reward model's), and
    where each policy token lands there (a tag's tokens all land on the reward model's last)."""
    starts, out, where, i = {k - len(tag) + 1 for k in tag_positions(ids, tag)}, [], [], 0
    while i < len(ids):
        n = len(tag) if i in starts else 1
        out += list(rm_tag) if i in starts else [ids[i]]
        where += [len(out) - 1] * n
        i += n
    return out, where


def step_end_probs(rm: nn.Module, prompts, responses, steps, head: PRMHead, pad_id: int, device,
                   rm_head: PRMHead | None = None) -> torch.Tensor:
    """The reward model's p(+) for every step, on the response grid at the step's last token. A
    tagged step is read at its tag (model.step_logits, where shepherd.py trained it); the untagged
    tail at a tag appended after it, so dropping the tag neither escapes a step's score nor earns a
    different one. rm_head: the reward model's head if its tag is a token of its own, else head."""
    rm_head = rm_head or head
    views = [rm_view(r, head.tag, rm_head.tag) for r in responses]
    tagged = [set(tag_positions(r, head.tag)) for r in responses]
    tail = [bool(s) and s[-1][1] not in t for s, t in zip(steps, tagged)]  # last step has no tag
    read = [v[:w[s[-1][1]] + 1] + list(rm_head.tag) if u else v
            for (v, w), s, u in zip(views, steps, tail)]
    p = step_probs(rm, make_grid([rm_view(q, head.tag, rm_head.tag)[0] for q in prompts], read,
                                 pad_id, device), rm_head).float().cpu()
    out = torch.zeros(len(responses), max(map(len, responses)))
    for b, (row, (_, w)) in enumerate(zip(steps, views)):
        for k, (_, last) in enumerate(row):
            out[b, last] = p[b, w[last] + len(rm_head.tag) if tail[b] and k == len(row) - 1
                             else w[last]]
    return out.to(device)


def oracle_step_probs(task, problems, responses, steps, decode, device) -> torch.Tensor:
    """--reward truth: p(+) = 1 at the end of a step the task's exact step truth accepts, else 0
    (response_steps' steps, so truths never shift onto the wrong tag). A perfect PRM, to tell a
    weak reward model from a weak PPO (the synthetic world only)."""
    p = torch.zeros(len(responses), max(map(len, responses)))
    for b, (problem, r, row) in enumerate(zip(problems, responses, steps)):
        for (_, last), ok in zip(row, task.step_truth(problem, step_texts(r, row, decode))):
            p[b, last] = float(ok)
    return p.to(device)


def step_texts(tokens: list[int], steps: list[tuple[int, int]], decode) -> list[str]:
    """Each step's text as step truth reads it (data.split_steps' form, the tag dropped)."""
    return [" ".join(data.split_steps(decode(tokens[first:last + 1]))) for first, last in steps]


def score_rewards(ends, p_end, mask, answered, *, kind: str, center: float,
                  penalty: float) -> torch.Tensor:
    """The reward model's part of the reward on the response grid (B, R). ends: each step's last
    token (end_mask); p_end: the reward model's p(+) of the step ending there (step_end_probs).
    prm: each step's p(+), on that step's last token.
    orm: one score, on the response's last token: p(+) of its last step (read at its tag, where
         Eq. 1 trained the ORM); `center` for a response without any step.
    Scores are centered (- center): with gamma = 1 the return SUMS step rewards, so raw p(+) would
    pay for every extra step, however doubtful (the known hack of writing more, or filler, steps);
    centered at 0.5, a doubted step costs reward. A response without a final answer (`answered`
    False) gets `penalty` on its last token, or stopping before a risky step, or rambling until cut
    off, would cost nothing."""
    ends = ends & mask
    k = torch.arange(mask.shape[1], device=mask.device)
    last = (mask.sum(1) - 1)[:, None]  # the response's last token (EOS, or where the limit cut)
    if kind == "orm":
        last_end = torch.where(ends, k, -1).max(1).values  # -1: no step
        s = torch.where(last_end >= 0, p_end.gather(1, last_end.clamp(min=0)[:, None])[:, 0],
                        center) - center
        score = torch.zeros_like(p_end).scatter(1, last, s[:, None])
    else:  # prm (and truth, an exact PRM)
        score = torch.where(ends, p_end - center, 0.0)
    return score + torch.where(k[None] == last, torch.where(answered, 0.0, penalty)[:, None], 0.0)


def total_rewards(score, old_lp, ref_lp, mask, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """r_k = score_k - beta (log pi_old(a_k) - log pi_ref(a_k)) per response token, 0 on padding
    (Math-Shepherd §3.5: beta = 0.04); the KL term summed over a response is an unbiased estimate
    of the sequence KL(pi || pi_ref). Returns (rewards, kl per token)."""
    kl = (old_lp - ref_lp) * mask
    rewards = (score - kl_coef * kl) * mask
    return rewards, kl


# --------------------------------------------------------------------------------------------------
# GAE


def gae(rewards, values, mask, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016), backward over each row's tokens:
        delta_k   = r_k + gamma V(s_{k+1}) - V(s_k)   (Eq. 9; V after the last token is 0: the
                                                       episode ends, at EOS or the length limit)
        A_k       = delta_k + gamma lambda A_{k+1}    (Eq. 16, as a recursion)
        returns_k = A_k + V(s_k)                      (the lambda-return: the value target)
    Padding columns get 0 and are never read as a "next" state (masks are prefixes of the row)."""
    B, R = rewards.shape
    adv = torch.zeros_like(rewards)
    next_value = torch.zeros(B, device=rewards.device)
    next_adv = torch.zeros(B, device=rewards.device)
    for k in reversed(range(R)):
        m = mask[:, k]
        delta = rewards[:, k] + gamma * next_value - values[:, k]
        a = delta + gamma * lam * next_adv
        adv[:, k] = torch.where(m, a, 0.0)
        next_value = torch.where(m, values[:, k], 0.0)
        next_adv = adv[:, k]
    return adv, (adv + values) * mask


def whiten(x, mask, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the valid tokens of the whole batch: the policy step's scale no longer
    depends on the reward's, and the mean advantage is 0 (a baseline on top of the critic's)."""
    v = x[mask]
    return torch.where(mask, (x - v.mean()) / (v.var(unbiased=False) + eps).sqrt(), 0.0)


# --------------------------------------------------------------------------------------------------
# The losses (PPO, Schulman et al. 2017)


def policy_loss(lp, old_lp, adv, clip: float):
    """Per token (the caller sums over the mask): PPO's clipped surrogate (Schulman et al. 2017,
    Eq. 7), negated: max(-A rho, -A clip(rho, 1 - eps, 1 + eps)), rho = pi / pi_old. A token stops
    pulling once its ratio has moved eps the way its advantage wants; a move the other way is never
    clipped. Returns (loss, rho)."""
    ratio = (lp - old_lp).exp()
    return torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip)), ratio


def value_loss(values, old_values, returns, value_clip: float):
    """Per token: 0.5 max((V - R)^2, (V_c - R)^2), V_c = V_old + clip(V - V_old, +-value_clip): the
    pessimistic of the two, so one batch cannot drag the critic far from the values the advantages
    were computed with."""
    v_clipped = old_values + (values - old_values).clamp(-value_clip, value_clip)
    return 0.5 * torch.maximum((values - returns) ** 2, (v_clipped - returns) ** 2)


# --------------------------------------------------------------------------------------------------
# One rollout: generate (sampler.py), then score every response in single forward passes


class NonFinite(RuntimeError):
    pass


class Timer(dict):  # seconds per phase of an iteration: with timer("generate"): ...
    @contextlib.contextmanager
    def __call__(self, name: str):
        t = time.perf_counter()
        yield
        self[name] = self.get(name, 0.0) + time.perf_counter() - t


class Rollout(TypedDict):
    """One sampled response and what scoring made of it; per-token lists run over the response."""
    prompt: list[int]
    response: list[int]
    old_lp: list[float]  # log pi_old, by the update's own forward
    ref_lp: list[float]
    value: list[float]
    score: list[float]  # score_rewards' row
    sampler_lp: list[float]  # the sampler's log-probs: a check on old_lp
    finish: str  # "stop" or "length"
    answered: bool
    correct: bool
    steps: int
    process_ok: bool | None  # every step true (tasks with step truth)
    step_scores: list[float]  # the reward model's p(+) per step


@torch.no_grad()
def rollout(cfg: Config, it: int, problems: list, M, sampler: Sampler, timer) -> list[Rollout]:
    """This rank's problems -> one response each, with per-token old/ref log-probs, values and
    reward-model score. Row seeds derive from (seed, iteration, problem id): the same rollouts on
    any number of ranks, and on resume."""
    tok, head, task = M.tok, M.head, M.task
    prompts = [tok.encode(data.format_prompt(p.question)) for p in problems]
    decode = lambda ids: response_text(tok, head, ids)  # noqa: E731
    with timer("generate"), full_params(M.policy, cfg), M.amp:  # sampled in pi_old's precision
        outs = sampler.generate(prompts, sampler.room(prompts, cfg.max_new_tokens),
                                temperature=cfg.temperature,
                                seeds=[seed_for(cfg.seed, "rollout", it, p.id) for p in problems])
    responses = [o.tokens for o in outs]
    steps = [response_steps(o.tokens, head.tag, o.finish_reason == "stop", decode) for o in outs]
    with timer("score"), M.amp:
        g = make_grid(prompts, responses, M.pad_id, M.device)
        # pi_old by the update's own forward, not the sampler's cached decode: first ratio exactly 1
        old_lp, _ = token_logprobs(M.policy, g, cfg.temperature)
        ref_lp, _ = token_logprobs(M.ref, g, cfg.temperature)
        values = grid_values(M.critic, g)
        texts = [decode(r) for r in responses]
        if cfg.reward == "truth":
            p_end = oracle_step_probs(task, problems, responses, steps, decode, M.device)
        else:  # the reward model reads the policy's tokens (its tag maybe its own token: rm_view)
            p_end = step_end_probs(M.rm, prompts, responses, steps, head, M.pad_id, M.device,
                                   M.rm_head)
        answered = torch.tensor([task.extract_answer(t) is not None for t in texts],
                                device=M.device)
        ends = end_mask(steps, g["mask"].shape).to(M.device)
        score = score_rewards(ends, p_end, g["mask"], answered, kind=cfg.reward,
                              center=cfg.reward_center, penalty=cfg.no_answer_penalty)
    truth = hasattr(task, "step_truth")
    rows = []
    for b, (p, o, text) in enumerate(zip(problems, outs, texts)):
        n = len(o.tokens)
        rows.append(Rollout(
            prompt=prompts[b], response=o.tokens, old_lp=old_lp[b, :n].tolist(),
            ref_lp=ref_lp[b, :n].tolist(), value=values[b, :n].tolist(),
            score=score[b, :n].tolist(), sampler_lp=o.sampling_logprobs, finish=o.finish_reason,
            answered=bool(answered[b]), correct=task.grade(text, p.answer), steps=len(steps[b]),
            process_ok=(all(task.step_truth(p, step_texts(o.tokens, steps[b], decode)))
                        if truth and steps[b] else None),
            step_scores=[p_end[b, last].item() for _, last in steps[b]]))
    return rows


def gather_rows(rows: list[Rollout], d: Dist) -> list[Rollout]:
    """Every rank gets every row (ids and floats: small), in global order: ranks hold contiguous
    slices of the prompts, so the batch and its minibatches are exactly the one-process ones."""
    parts = [rows] * d.world
    if d.world > 1:
        torch.distributed.all_gather_object(parts, rows)
    return [r for part in parts for r in part]


def build_batch(cfg: Config, rows: list[Rollout], M) -> Grid:
    """Global batch on this rank: grid, rollout tensors, rewards, whitened advantages, returns."""
    g = make_grid([r["prompt"] for r in rows], [r["response"] for r in rows], M.pad_id, M.device)
    R = g["mask"].shape[1]
    for key in ("old_lp", "ref_lp", "value", "score"):
        g[key] = pad_rows([r[key] for r in rows], 0.0, torch.float32, M.device, R)
    g["rewards"], g["kl"] = total_rewards(g["score"], g["old_lp"], g["ref_lp"], g["mask"],
                                          cfg.kl_coef)
    if not torch.isfinite(g["rewards"]).all() or not torch.isfinite(g["value"]).all():
        raise NonFinite("non-finite rewards or values in the rollout")
    assert not g["rewards"][~g["mask"]].any(), "a reward sits on padding"
    adv, g["returns"] = gae(g["rewards"], g["value"], g["mask"], cfg.gamma, cfg.lam)
    g["adv"] = whiten(adv, g["mask"])
    return g


# --------------------------------------------------------------------------------------------------
# One update: epochs x shuffled minibatches; each rank takes its share of every minibatch


def rows_of(g: Grid, idx: torch.Tensor) -> Grid:
    """Rows idx of a batch, trimmed to their own longest sequence and response."""
    # a row's last pos is prompt + response - 2
    S, R = int(g["pos"][idx].max()) + 2, int(g["mask"][idx].sum(1).max())
    return {k: (v[idx, :S] if k == "ids" else v[idx, :R]) for k, v in g.items()}


def sync_gradients(M, on: bool):
    """Gradient all-reduce on or off for both trained models' next backward passes: DDP's no_sync()
    (entered here, left by M.no_sync.close()) or FSDP2's set_requires_gradient_sync."""
    M.no_sync = contextlib.ExitStack()
    for model in (M.policy_step, M.critic_step):
        if isinstance(model, nn.parallel.DistributedDataParallel) and not on:
            M.no_sync.enter_context(model.no_sync())
        elif hasattr(model, "set_requires_gradient_sync"):
            model.set_requires_gradient_sync(on)


def update(cfg: Config, it: int, g: Grid, M, d: Dist) -> dict:
    B, mb = g["ids"].shape[0], cfg.minibatch_size
    per_rank = mb // d.world
    steps_per_it = cfg.epochs * (B // mb)
    sums = dict.fromkeys(("loss/policy", "loss/value", "policy/entropy", "policy/clipfrac",
                          "policy/approx_kl", "tokens"), 0.0)  # token sums, averaged at the end
    gnorms = []
    for epoch in range(cfg.epochs):
        # the same shuffle on every rank
        gen = torch.Generator().manual_seed(seed_for(cfg.seed, "shuffle", it, epoch))
        perm = torch.randperm(B, generator=gen).to(M.device)
        for start in range(0, B, mb):
            step = it * steps_per_it + epoch * (B // mb) + start // mb
            for o, base in ((M.opt_policy, cfg.lr), (M.opt_critic, cfg.critic_lr)):
                for group in o.param_groups:  # linear warmup, then cosine to base x min_lr_ratio
                    group["lr"] = lr_at(step, cfg.iterations * steps_per_it, base, cfg.warmup,
                                        base * cfg.min_lr_ratio)
            rows = perm[start:start + mb]
            # DDP/FSDP AVERAGE gradients over ranks: each rank's token SUM x world / (tokens in the
            # whole minibatch) makes it the mean over the minibatch's tokens, however they fall
            scale = d.world / g["mask"][rows].sum()
            mine = rows[d.rank * per_rank:(d.rank + 1) * per_rank]
            chunks = mine.split(cfg.micro_batch)
            for j, chunk in enumerate(chunks):  # gradient accumulation: chunks' gradients add up
                sync_gradients(M, j == len(chunks) - 1)  # all-reduce once, after the last chunk
                x = rows_of(g, chunk)
                m = x["mask"]
                with M.amp:  # policy, then critic: one model's activations alive at a time
                    lp, ent = token_logprobs(M.policy_step, x, cfg.temperature, entropy=True)
                pg, ratio = policy_loss(lp, x["old_lp"], x["adv"], cfg.clip)
                ((pg * m).sum() * scale).backward()  # no entropy bonus: the KL penalty anchors pi
                with M.amp:
                    values = grid_values(M.critic_step, x)
                vf = value_loss(values, x["value"], x["returns"], cfg.value_clip)
                ((vf * m).sum() * scale).backward()
                M.no_sync.close()
                with torch.no_grad():
                    log_ratio = lp - x["old_lp"]
                    for k, v in (("loss/policy", pg), ("loss/value", vf), ("policy/entropy", ent),
                                 ("policy/clipfrac", (ratio - 1).abs() > cfg.clip),
                                 ("policy/approx_kl", ratio - 1 - log_ratio),  # k3: KL(old || new)
                                 ("tokens", 1)):
                        sums[k] = sums[k] + (v * m).sum().float()
            gp = torch.nn.utils.clip_grad_norm_(M.policy_step.parameters(), cfg.max_grad_norm)
            gc = torch.nn.utils.clip_grad_norm_(M.critic_step.parameters(), cfg.max_grad_norm)
            gp, gc = (float(x.full_tensor() if hasattr(x, "full_tensor") else x) for x in (gp, gc))
            if not (math.isfinite(gp) and math.isfinite(gc)):  # all-reduced: every rank stops here
                raise NonFinite(f"gradient norm {gp} (policy), {gc} (critic) at iteration {it + 1}")
            M.opt_policy.step()
            M.opt_critic.step()
            M.opt_policy.zero_grad(set_to_none=True)
            M.opt_critic.zero_grad(set_to_none=True)
            gnorms.append(gp)
    total = torch.stack(list(sums.values()))
    if d.world > 1:
        torch.distributed.all_reduce(total)
    stats = dict(zip(sums, total.tolist()))
    n = stats.pop("tokens")
    return {**{k: v / n for k, v in stats.items()}, "policy/grad_norm": sum(gnorms) / len(gnorms),
            "lr": M.opt_policy.param_groups[0]["lr"]}


# --------------------------------------------------------------------------------------------------
# Held-out accuracy and checkpoints


@torch.no_grad()
def greedy_accuracy(cfg: Config, M, sampler: Sampler, problems: list, d: Dist) -> float:
    """evaluate_policy's greedy accuracy: problems split over ranks, counts summed."""
    mine = problems[d.rank::d.world]
    with full_params(M.policy, cfg):
        res = evaluate_policy(M.policy, M.tok, M.task, mine, cfg.max_new_tokens,
                              sampler=sampler, tag=cfg.tag)
    right = torch.tensor(res["accuracy"] * len(mine))
    if d.world > 1:
        right = right.to(M.device)
        torch.distributed.all_reduce(right)
    return right.item() / max(1, len(problems))


def plain_copy(model: nn.Module, cfg: Config) -> nn.Module:
    """The model with full, unsharded CPU weights. Under FSDP a collective every rank must call:
    gathered on rank 0, None elsewhere."""
    if not cfg.fsdp:
        return model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    state = get_model_state_dict(model,
                                 options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not state:
        return None  # gathered on rank 0 only
    backbone = getattr(model, "backbone", model)
    with torch.device("meta"):
        copy = Transformer(backbone.config)
        copy = ValueModel(copy) if model is not backbone else copy
    copy.load_state_dict(state, assign=True)
    b = getattr(copy, "backbone", copy)
    if b.config.tie_word_embeddings:
        b.lm_head.weight = b.model.embed_tokens.weight
    return copy


def optim_state(model, optimizer, cfg: Config, state=None):
    """Get (state None) or set a full optimizer state dict (under FSDP: distributed.checkpoint)."""
    if not cfg.fsdp:
        return optimizer.state_dict() if state is None else optimizer.load_state_dict(state)
    from torch.distributed.checkpoint import state_dict as dcp
    options = dcp.StateDictOptions(full_state_dict=True, cpu_offload=True)
    if state is None:
        return dcp.get_optimizer_state_dict(model, optimizer, options=options)
    dcp.set_optimizer_state_dict(model, optimizer, state, options=options)


def save_checkpoint(cfg: Config, it: int, M, d: Dist):
    """out/checkpoint/{policy, critic (backbone + value_head.safetensors), trainer_state.pt},
    written to a temp folder and swapped in whole: a crash (or NaN) leaves the old one intact."""
    from safetensors.torch import save
    policy, critic = plain_copy(M.policy, cfg), plain_copy(M.critic, cfg)
    opts = [optim_state(M.policy, M.opt_policy, cfg), optim_state(M.critic, M.opt_critic, cfg)]
    if d.main:
        out = Path(cfg.out)
        tmp, final = out / f".checkpoint.tmp-{os.getpid()}", out / "checkpoint"
        shutil.rmtree(tmp, ignore_errors=True)
        policy.save_pretrained(tmp / "policy", tokenizer_dir=M.tok_dir)
        head = {k: v.detach().cpu().contiguous() for k, v in critic.head.state_dict().items()}
        critic.backbone.save_pretrained(tmp / "critic", tokenizer_dir=M.tok_dir,
                                        extra_files={"value_head.safetensors": save(head)})
        torch.save({"iteration": it, "opt_policy": opts[0], "opt_critic": opts[1],
                    "config": asdict(cfg)}, tmp / "trainer_state.pt")
        swap_in(tmp, final)
    barrier(d)


# --------------------------------------------------------------------------------------------------
# The loop


@dataclass
class Models:
    """What a PPO iteration reads. policy, critic: the trained modules (generation, scoring,
    checkpoints); policy_step, critic_step: what the update's forward/backward runs through (the
    same modules, or DDP wrappers when data-parallel). ref, rm: frozen (rm None under truth)."""
    device: str
    amp: contextlib.AbstractContextManager  # bf16 autocast on CUDA without FSDP, else a no-op
    pad_id: int
    tok_dir: str  # the policy's tokenizer, saved with every checkpoint
    policy: nn.Module
    critic: nn.Module
    ref: nn.Module
    rm: nn.Module | None
    policy_step: nn.Module
    critic_step: nn.Module
    opt_policy: torch.optim.Optimizer
    opt_critic: torch.optim.Optimizer
    task: object = None  # data.get_task(cfg.task): prompts and grader
    tok: Tokenizer | None = None  # the policy's tokenizer
    head: PRMHead | None = None  # the tag and +/- in the policy's tokens
    rm_head: PRMHead | None = None  # the RM's tag and +/- in its own tokens (reward_model_head)
    no_sync: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)  # sync_gradients


def precision(cfg: Config, device: str):
    """-> (dtype of the frozen reward model, the context every forward that makes a log-prob or a
    score runs in). Trained models keep fp32 weights (Adam's small steps vanish in bf16); on GPU
    they compute in bf16 (autocast, or FSDP2's mixed precision, which shard() sets)."""
    cuda = device.startswith("cuda")
    frozen = DTYPES["bfloat16" if cuda else "float32"] if cfg.dtype == "auto" else DTYPES[cfg.dtype]
    return frozen, (torch.autocast("cuda", dtype=torch.bfloat16) if cuda and not cfg.fsdp
                    else contextlib.nullcontext())


def check_inputs(cfg: Config):
    """-> (task, the policy's folder), every checkpoint flag checked before anything is built."""
    task = data.get_task(cfg.task)
    if cfg.reward == "truth" and not hasattr(task, "step_truth"):
        raise InputError(f"--reward truth needs a task that knows each step's truth (synthetic); "
                         f"{cfg.task} does not")
    policy_dir = cfg.policy or getattr(task, "POLICY_DIR", "")
    if not policy_dir:
        raise InputError(f"--policy is required for task {cfg.task!r}")
    if not Path(policy_dir, "config.json").exists() and cfg.task == "synthetic" and not cfg.policy:
        raise InputError(f"{policy_dir}: the tiny policy is missing; build it with: "
                         f"{task.POLICY_COMMAND}")
    for what, path in (("--policy", policy_dir), ("--reward-model", cfg.reward_model),
                       ("--rm-base", cfg.rm_base)):
        if path:  # checked (no weights read) before anything is built or written
            shepherd.load_model(path, what, check_only=True)
    return task, policy_dir


def setup(cfg: Config, d: Dist):
    """-> (Models, the iteration to start at: > 0 when resuming a checkpoint)."""
    task, policy_dir = check_inputs(cfg)
    # the reward model scores steps and starts the critic (--critic-init reward; truth: only that)
    needs_rm = cfg.reward != "truth" or cfg.critic_init == "reward"
    rm_dir = ensure_reward_model(cfg, policy_dir, d) if needs_rm else policy_dir
    ckpt = Path(cfg.out) / "checkpoint"
    resume = (ckpt / "trainer_state.pt").exists() and not cfg.restart
    if resume:  # mmap: pages shared, not copied
        st = shepherd.load_trainer_state(ckpt / "trainer_state.pt",
                                         ("iteration", "opt_policy", "opt_critic", "config"), True)
        for part in ("policy", "critic"):
            shepherd.load_model(ckpt / part, f"the checkpoint's {part}", check_only=True)
        if not (ckpt / "critic" / "value_head.safetensors").is_file():
            raise InputError(f"{ckpt / 'critic'}: no value_head.safetensors; pass --restart")
        shepherd.check_settings(ckpt, st["config"],
                                {k: v for k, v in asdict(cfg).items() if k not in NOT_ALGORITHM})
    frozen, amp = precision(cfg, d.device)

    # one model at a time: under FSDP sharded as soon as loaded
    def load(path, dtype=torch.float32, value=False):
        model = Transformer.from_pretrained(path, dtype=dtype, device=d.device)
        model = ValueModel(model).to(d.device) if value else model
        if value and resume:
            from safetensors.torch import load_file
            model.head.load_state_dict(load_file(str(Path(path) / "value_head.safetensors")))
        if cfg.fsdp:
            shard(model, cfg, frozen)
        return model
    policy = load(ckpt / "policy" if resume else policy_dir)
    # the reference computes exactly as the policy at iteration 0, so the KL starts at 0 to the bit:
    # under FSDP2 both compute with weights cast to `frozen`, so it is stored in it; under autocast
    # weights compute as stored, so it is fp32 like the policy (a bf16 copy gave a spurious KL)
    ref = load(policy_dir, frozen if cfg.fsdp else torch.float32).requires_grad_(False)
    rm = None if cfg.reward == "truth" else load(rm_dir, frozen).requires_grad_(False)
    critic = load(ckpt / "critic" if resume
                  else rm_dir if cfg.critic_init == "reward" else policy_dir, value=True)
    tok = Tokenizer(policy_dir)
    head = shepherd.prm_head(tok, cfg.tag)
    rm_head = reward_model_head(tok, Tokenizer(rm_dir), cfg.tag)
    # pad is neither EOS (padding would read as a response's end) nor the step tag (a reward there)
    pad_id = tok.pad_id if tok.pad_id not in (None, tok.eos_id, *head.tag) else 0
    assert pad_id not in (tok.eos_id, *head.tag)
    ddp = d.world > 1 and not cfg.fsdp
    M = Models(device=d.device, amp=amp, pad_id=pad_id, tok_dir=policy_dir, policy=policy,
               critic=critic, ref=ref, rm=rm, task=task, tok=tok, head=head, rm_head=rm_head,
               policy_step=nn.parallel.DistributedDataParallel(policy) if ddp else policy,
               critic_step=nn.parallel.DistributedDataParallel(critic) if ddp else critic,
               opt_policy=adamw(policy, cfg.lr, cfg.weight_decay),
               opt_critic=adamw(critic, cfg.critic_lr, cfg.weight_decay))
    start = 0
    if resume:
        optim_state(policy, M.opt_policy, cfg, st["opt_policy"])
        optim_state(critic, M.opt_critic, cfg, st["opt_critic"])
        start = st["iteration"]
    return M, start


def summarize(rows: list[Rollout], g: Grid) -> dict:
    """What to watch: reward, KL, length and steps per response (step rewards invite more steps)."""
    n, m = len(rows), g["mask"]
    scores = [s for r in rows for s in r["step_scores"]]
    ret, val = g["returns"][m], g["value"][m]
    lp_err = max(max((abs(a - b) for a, b in zip(r["old_lp"], r["sampler_lp"])), default=0.0)
                 for r in rows)
    ok = [r["process_ok"] for r in rows if r["process_ok"] is not None]
    return {"reward/score": g["score"].sum().item() / n,  # reward-model part, penalties included
            "reward/total": g["rewards"].sum().item() / n,
            "reward/mean_step_p": sum(scores) / max(1, len(scores)),
            "policy/kl": g["kl"].sum().item() / n,  # per response: sum of log pi_old - log pi_ref
            "value/explained_var": 1 - ((ret - val).var() / ret.var().clamp(min=1e-8)).item(),
            "rollout/length": m.sum().item() / n,
            "rollout/steps": sum(r["steps"] for r in rows) / n,
            "rollout/step_tokens": m.sum().item() / max(1, sum(r["steps"] for r in rows)),
            "rollout/truncated": sum(r["finish"] == "length" for r in rows) / n,
            "rollout/no_answer": sum(not r["answered"] for r in rows) / n,
            "rollout/accuracy": sum(r["correct"] for r in rows) / n,
            "rollout/all_steps_true": sum(ok) / len(ok) if ok else float("nan"),
            "check/sampler_logprob_err": lp_err}  # sampler vs training log-probs: should be ~0


OUTPUTS = ("checkpoint", "log.jsonl", "eval.json")  # what a run writes in --out


def check_run(cfg: Config, d: Dist):
    """What no flag's own type can check: the batch sizes against the world size, and --out."""
    if (cfg.batch_size % cfg.minibatch_size or cfg.minibatch_size % d.world
            or cfg.batch_size % d.world):
        raise InputError(f"--batch-size {cfg.batch_size} must be a multiple of --minibatch-size "
                         f"{cfg.minibatch_size}, itself a multiple of the world size {d.world}")
    out = Path(cfg.out)
    if out.exists() and (not out.is_dir()
                         or any(out.iterdir()) and not any((out / n).exists() for n in OUTPUTS)):
        raise InputError(f"{out}: --out exists and is not a ppo.py output; choose another --out")


def my_prompts(cfg: Config, it: int, train: list, order: list[int], d: Dist) -> list:
    """The iteration's problems: a fixed slice of a fixed permutation; each rank a contiguous part
    (so the gathered batch is the one-process batch, in its order)."""
    idx = [order[(it * cfg.batch_size + j) % len(train)] for j in range(cfg.batch_size)]
    per = cfg.batch_size // d.world
    return [train[i] for i in idx[d.rank * per:(d.rank + 1) * per]]


def test_accuracy(cfg: Config, M, sampler: Sampler, d: Dist):
    """The final greedy test accuracy, printed and written to --out/eval.json."""
    test = M.task.load("test")[:cfg.test_problems] if cfg.test_problems else []
    acc = greedy_accuracy(cfg, M, sampler, test, d) if test else float("nan")
    if d.main:
        res = {"test_greedy_accuracy": acc, "problems": len(test), "reward": cfg.reward,
               "iterations": cfg.iterations}
        shepherd.atomic_write(Path(cfg.out) / "eval.json", json.dumps(res, indent=2) + "\n")
        print(f"test greedy accuracy {acc:.3f} on {len(test)} problems; "
              f"checkpoint in {Path(cfg.out) / 'checkpoint'}")


def report(stats: dict, log, bar):
    """An iteration's record: a line of log.jsonl, the bar's postfix, printed at an evaluation."""
    log.write(json.dumps(stats) + "\n")
    log.flush()
    bar.set_postfix(score=f"{stats['reward/score']:.3f}", kl=f"{stats['policy/kl']:.3f}",
                    steps=f"{stats['rollout/steps']:.2f}", acc=f"{stats['rollout/accuracy']:.2f}")
    if "eval/greedy_accuracy" in stats:  # .4g: an lr of 3e-6 must not print as 0.0
        bar.write(json.dumps({k: float(f"{v:.4g}") if isinstance(v, float) else v
                              for k, v in stats.items()}))


def main(argv=None) -> int:
    return shepherd.run_cli(run, argv, "the same command resumes from the last checkpoint")


def run(argv=None) -> int:
    cfg = parse_args(argv)
    d = init_distributed(cfg.device or None)
    check_run(cfg, d)
    out = Path(cfg.out)
    M, start = setup(cfg, d)
    task = M.task
    resume = start > 0
    made = shepherd.first_new_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    heldout = "val" if "val" in task.SPLITS else "test"  # GSM8K and MATH have no val split
    train = task.load("train")
    val = task.load(heldout)[:cfg.eval_problems] if cfg.eval_problems else []
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    # no CUDA graphs under FSDP (weights move) or autocast (a graph would keep its first bf16 casts)
    eager = cfg.fsdp or not isinstance(M.amp, contextlib.nullcontext)
    sampler = Sampler(M.policy, max_batch=max(cfg.batch_size // d.world, 64),
                      cuda_graphs=False if eager else None)
    log = (open_log(out / "log.jsonl", start if resume else None, "iteration")
           if d.main else None)
    if d.main:
        print(("resuming at iteration %d" % start) if resume else json.dumps(asdict(cfg)),
              flush=True)
    try:
        if not resume and cfg.eval_problems:
            acc = greedy_accuracy(cfg, M, sampler, val, d)
            if d.main:
                print(f"iteration 0: held-out greedy accuracy {acc:.3f} "
                      f"({len(val)} {heldout} problems)", flush=True)
                log.write(json.dumps({"iteration": 0, "eval/greedy_accuracy": acc}) + "\n")
        bar = shepherd.progress(range(start, cfg.iterations), d, desc=f"ppo {cfg.reward}",
                                initial=start, total=cfg.iterations, quiet=cfg.quiet)
        for it in bar:
            timer = Timer()
            try:
                mine = my_prompts(cfg, it, train, order, d)
                rows = gather_rows(rollout(cfg, it, mine, M, sampler, timer), d)
                with timer("update"):
                    g = build_batch(cfg, rows, M)
                    stats = update(cfg, it, g, M, d)
            except NonFinite as e:
                last = (f"the last good checkpoint is {out / 'checkpoint'} "
                        "(only ever replaced by a finite one)"
                        if (out / "checkpoint").exists() else "no checkpoint was written yet")
                raise SystemExit(f"stopping: {e}; {last}") from None
            stats = {"iteration": it + 1, **summarize(rows, g), **stats,
                     **{f"time/{k}": v for k, v in timer.items()}}
            if cfg.eval_problems and ((it + 1) % cfg.eval_every == 0 or it + 1 == cfg.iterations):
                stats["eval/greedy_accuracy"] = greedy_accuracy(cfg, M, sampler, val, d)
            if d.main:
                report(stats, log, bar)
            if (it + 1) % cfg.save_every == 0 or it + 1 == cfg.iterations:
                save_checkpoint(cfg, it + 1, M, d)
    except BaseException:  # nothing saved yet: leave nothing (the log, the folders made)
        if d.main and not (out / "checkpoint").exists():
            log.close()
            Path(log.name).unlink(missing_ok=True)
            if made:
                shutil.rmtree(made, ignore_errors=True)
        raise
    test_accuracy(cfg, M, sampler, d)
    if d.main:
        log.close()
    if d.world > 1:
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
