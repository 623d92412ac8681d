"""Verification: rerank N sampled solutions per problem (Math-Shepherd Table 1; PRM800K's
protocol).

    python shepherd.py verify

Self-consistency (majority vote), best-of-N by a reward model (PRM: min, prod or last step
score; ORM: the last), and RM-weighted voting; plus the diagnostics that say why a curve moves,
and a reference: a plain LM (e.g. the reward models' base) read as a verifier.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

import data
from data.formats import InputError, read_input, steps_field, text_field
from model import DTYPES, PRMHead, Tokenizer, Transformer, tag_positions
from shepherd import (NONNEG, POSITIVE, Common, Signs, atomic_write, auc, first_new_folder, flag,
                      load_model, prm_head, progress, seed_for, task_problems)


def aggregate(step_scores: list[float], how: str) -> float:
    """A solution's score from its step scores: min (Math-Shepherd's), prod (PRM800K's), or last."""
    if not step_scores:
        return 0.0
    if how == "min":
        return min(step_scores)
    if how == "prod":
        return math.prod(step_scores)
    if how == "last":
        return step_scores[-1]
    raise ValueError(f"unknown aggregation {how!r}")


def top(keys: list, value) -> list:
    """Every key with the highest value, in order: an argmax with its ties (copies of a text get
    one score, so exact ties are common)."""
    best = max((value(k) for k in keys), default=None)
    return [k for k in keys if value(k) == best]


def majority_vote(answers: list) -> list:
    """Self-consistency: the most frequent answer, or the answers tied for it (None never votes)."""
    counts = {}
    for a in answers:
        if a is not None:
            counts[a] = counts.get(a, 0) + 1
    return top(list(counts), counts.get) or [None]


def best_of_n(answers: list, scores: list[float]) -> list:
    """The answer of the highest-scoring solution; of tied solutions, every one's answer."""
    return [answers[i] for i in top(range(len(answers)), lambda i: scores[i])] or [None]


def weighted_vote(answers: list, scores: list[float]) -> list:
    """Self-consistency + reward model: argmax over answers a of sum_i 1[a_i = a] * RM(p, S_i)."""
    total = {}
    for a, s in zip(answers, scores):
        if a is not None:
            total[a] = total.get(a, 0.0) + s
    return top(list(total), total.get) or [None]


def rm_text(question: str, steps: list[str], style: str) -> str:
    """What a reward model reads: ours (prompt + steps, as the policy writes them) or the released
    Math-Shepherd PRM's ('question Step 1: ... ки\nStep 2: ... ки')."""
    if style == "math-shepherd":
        return question.strip() + " " + "\n".join(f"Step {i + 1}: {s} {data.STEP_TAG}"
                                                  for i, s in enumerate(steps))
    return data.format_prompt(question) + data.join_steps(steps)


@torch.no_grad()
def score_solutions(model: Transformer, tok: Tokenizer, head: PRMHead, texts: list[str],
                    batch_size: int = 32, starts: list[int] | None = None) -> list[list[float]]:
    """Every step score of every solution: one forward pass per distinct text (batched,
    right-padded, longest first; a policy's samples repeat, so copies are scored once).
    With `starts` (each text's first solution token) the model is read as an LM (lm_step_scores)."""
    from model import step_scores
    start_of = dict(zip(texts, starts or [0] * len(texts)))
    distinct = list(start_of)
    if len(distinct) < len(texts):
        got = dict(zip(distinct, score_solutions(model, tok, head, distinct, batch_size,
                                                 starts and [start_of[t] for t in distinct])))
        return [got[t] for t in texts]
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out = [None] * len(texts)
    device = next(model.parameters()).device
    pad = tok.pad_id if tok.pad_id is not None else tok.eos_id
    for i in progress(range(0, len(order), batch_size), desc="score", leave=False):
        idx = order[i:i + batch_size]
        ctx = model.config.max_position_embeddings
        ids = [tok.encode(data.to_model_tag(texts[j], head.text))[:ctx] for j in idx]
        batch = torch.full((len(ids), max(map(len, ids))), pad, dtype=torch.long)
        for b, x in enumerate(ids):
            batch[b, :len(x)] = torch.tensor(x)
        batch = batch.to(device)
        got = (step_scores(model, batch, head) if starts is None else
               lm_step_scores(model, batch, head.tag, [starts[j] for j in idx]))
        for j, sc in zip(idx, got):
            out[j] = sc
    return out


def lm_step_scores(model: Transformer, input_ids: torch.Tensor, tag,
                   starts: list[int]) -> list[list[float]]:
    """A causal LM read as a verifier (a reference, not Math-Shepherd's method): a step's score is
    the lowest probability the LM gives any of its tokens, from the row's start (or the token
    after the previous tag) through its tag. What a reward model's base knows before reward
    training: a slip is a token the base would not have written."""
    logits = model(input_ids).float()[:, :-1]  # [b, t]: the prediction of token t + 1
    p_tok = (logits.gather(-1, input_ids[:, 1:, None])[..., 0] - logits.logsumexp(-1)).exp()
    out = []
    for b, row in enumerate(input_ids.tolist()):
        scores, lo = [], max(starts[b], 1)
        for t in tag_positions(row, tag):
            scores.append(p_tok[b, lo - 1:t].min().item())
            lo = t + 1
        out.append(scores)
    return out


def solution_score(rm_name: str, step_scores: list[float]) -> float:
    """What best-of-N ranks by: an ORM's score at the last tag, a PRM's minimum over its steps."""
    return aggregate(step_scores, "last" if rm_name.startswith("ORM") else "min")


def method_choices(answers: list, scores: dict[str, list[list[float]]]) -> dict[str, list]:
    """Every method's chosen answer for one problem (several when tied, each equally likely).
    scores: reward model name -> step scores."""
    chosen = {"SC": majority_vote(answers)}
    for name, steps in scores.items():
        if name.startswith("ORM"):
            chosen[name] = best_of_n(answers, [solution_score(name, x) for x in steps])
        else:  # a PRM's three aggregations, each its own best-of-N
            for how in ("min", "prod", "last"):
                chosen[f"{name}-{how}"] = best_of_n(answers, [aggregate(x, how) for x in steps])
        chosen[f"SC+{name}"] = weighted_vote(answers, [solution_score(name, x) for x in steps])
    return chosen


def blind_choice(texts: list[str], right: list[bool]) -> float:
    """The expected hit of a verifier blind within a problem: its argmax is a uniformly random
    DISTINCT text (a deterministic score ties the copies of a text, and favours no right one)."""
    distinct = dict(zip(texts, right))
    return sum(distinct.values()) / len(distinct)


def best_of_n_curve(per_problem: list[dict], ns: list[int], subsets: int, seed: int) -> dict:
    """Accuracy of every method vs N: for each N, `subsets` random subsets of N solutions per
    problem (as PRM800K's evaluation does); the mean over subsets and its std. A tie counts as
    the mean of its tied choices, so at N = all solutions (one subset) the number is exact.
    per_problem: {"answers": [...], "correct": {answer: bool}, "scores": {rm: [[step scores]...]}},
    and optionally "texts" (each solution's text), which adds the blind baseline ("blind")."""
    rng = random.Random(seed)
    curve = {}
    for n in ns:
        accs = {}
        for _ in range(subsets if n < min(len(p["answers"]) for p in per_problem) else 1):
            hits = {}
            for p in per_problem:
                idx = rng.sample(range(len(p["answers"])), n)
                ans = [p["answers"][i] for i in idx]
                scores = {k: [v[i] for i in idx] for k, v in p["scores"].items()}
                chosen = method_choices(ans, scores)
                for m, tied in chosen.items():
                    hits[m] = hits.get(m, 0) + sum(
                        bool(p["correct"].get(a, False)) for a in tied) / len(tied)
                if "texts" in p:
                    right = [bool(p["correct"].get(a, False)) for a in ans]
                    hits["blind"] = hits.get("blind", 0) + blind_choice(
                        [p["texts"][i] for i in idx], right)
            for m, h in hits.items():
                accs.setdefault(m, []).append(h / len(per_problem))
        curve[n] = {m: {"mean": sum(a) / len(a),
                        "std": (sum((x - sum(a) / len(a)) ** 2 for x in a) / len(a)) ** 0.5}
                    for m, a in accs.items()}
    return curve


def verifier_diagnostics(per_problem: list[dict]) -> dict[str, dict]:
    """Why best-of-N moves, per reward model:
      within_auc  P(a right solution outscores a wrong one of the SAME problem), averaged over
                  problems that have both: what reranking needs (0.5 = blind within a problem);
      pooled_auc  the same over all solutions pooled: also rewards knowing which problems are hard;
      step_auc    (tasks with step truth) every step's score against its exact truth, pooled;
      within_auc_process  within_auc with "right" = every step true (the process, not the answer).
    cmd_verify adds slip_auc where the task makes slip pairs (a step vs with its result changed)."""
    out = {}
    for name in per_problem[0]["scores"] if per_problem else []:
        within, within_proc, pooled, steps = [], [], ([], []), ([], [])
        for p in per_problem:
            s = [solution_score(name, x) for x in p["scores"][name]]
            y = [float(p["correct"].get(a, False)) for a in p["answers"]]
            pooled[0].extend(s)
            pooled[1].extend(y)
            if 0 < sum(y) < len(y):
                within.append(auc(s, y))
            if "truth" in p:
                ok = [float(all(t) and bool(t)) for t in p["truth"]]
                if 0 < sum(ok) < len(ok):
                    within_proc.append(auc(s, ok))
                for sc, t in zip(p["scores"][name], p["truth"]):
                    steps[0].extend(sc[:len(t)])
                    steps[1].extend(float(x) for x in t[:len(sc)])
        mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
        out[name] = {"within_auc": mean(within), "problems_with_both": len(within),
                     "pooled_auc": auc(*pooled)}
        if steps[0]:
            out[name].update(step_auc=auc(*steps), within_auc_process=mean(within_proc))
    return out


@dataclass
class VerifyConfig(Signs, Common):
    """Best-of-N reranking with reward models, self-consistency, weighted voting.

    Sample S solutions per problem (or read them), score each once with every reward model, and
    report accuracy vs N for SC, ORM, PRM-min/prod/last, SC+ORM, SC+PRM."""
    dtype: str = flag("float32", "weights' dtype", choices=list(DTYPES))
    task: str = flag("synthetic", choices=list(data.TASKS))
    split: str = flag("test")
    limit: int = flag(100, "first LIMIT problems of the split", type=POSITIVE)
    model: str | None = flag(None, "generator (default: the synthetic world's tiny policy)")
    solutions: str | None = flag(None, "JSONL of solutions (problem_id or question, steps) "
                                 "instead of sampling")
    num_samples: int = flag(64, "S, solutions per problem", type=POSITIVE)
    temperature: float = flag(0.7, type=NONNEG)
    max_new_tokens: int = flag(192, type=POSITIVE)
    prm: list | None = flag(None, "a process reward model (repeatable)", action="append",
                            metavar="[NAME=]PATH")
    orm: list | None = flag(None, "an outcome reward model (repeatable)", action="append",
                            metavar="[NAME=]PATH")
    lm: list | None = flag(None, "a causal LM as a reference verifier, e.g. a reward model's base "
                           "(repeatable): a step scores the lowest probability the LM gives a "
                           "token of it; not Math-Shepherd's method", action="append",
                           metavar="[NAME=]PATH")
    rm_format: str = flag("shepherd", "input layout the reward models were trained on "
                          "(math-shepherd: the released PRM's)",
                          choices=["shepherd", "math-shepherd"])
    subsets: int = flag(100, "random subsets per N", type=POSITIVE)
    batch_size: int = flag(64, type=POSITIVE)
    out: str = flag("runs/verify")


def split_rm(kind: str, spec: str) -> tuple[str, str]:
    """'NAME=PATH' or 'PATH' -> (the scorer's name: 'PRM-NAME' or 'PRM', path). The name is part
    of a file name (scores.PRM-NAME.json), so a path in it is refused ('%': bench's '200%')."""
    name, sep, path = spec.partition("=")
    if not sep or not name:
        return kind, path if sep else spec
    if not re.fullmatch(r"[A-Za-z0-9_.%-]+", name) or name in (".", ".."):
        raise InputError(f"--{kind.lower()} {spec}: expected a NAME of letters, digits, '-', '_', "
                         f"'.' and '%' (it names the file scores.{kind}-NAME.json)")
    return f"{kind}-{name}", path


def rm_flag(name: str) -> str:
    """How errors name a scorer: 'PRM-hard' -> '--prm PRM-hard'."""
    return f"--{name.split('-')[0].lower()} {name}"


def check_out(out: Path):
    """--out: new, empty, or an earlier verify run's (whose files it reuses and overwrites)."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: --out exists and is not a folder")
    # what a verify run leaves: its results, a score cache, or samples beside their settings
    ours = (any(out.glob("scores.*.json")) or (out / "results.json").exists()
            or all((out / n).exists() for n in ("solutions.jsonl", "config.json")))
    if out.exists() and any(out.iterdir()) and not ours:
        raise InputError(f"{out}: --out exists and is not a verify output; choose another --out")


def read_own_json(path: Path, fields: tuple[str, ...]) -> dict | None:
    """A JSON object an earlier run wrote into --out, or None if absent. A foreign or broken one
    is the user's to remove: never read past, never overwritten."""
    if not path.exists():
        return None
    try:
        obj = json.loads(path.read_bytes()) if path.is_file() else None
    except ValueError:  # not JSON, not UTF-8
        obj = None
    if not isinstance(obj, dict) or not all(k in obj for k in fields):
        raise InputError(f"{path}: expected a JSON object with {', '.join(map(repr, fields))}, "
                         f"as verify writes it (delete it to recompute)")
    return obj


@contextmanager
def removed_on_error(out: Path):
    """A run that fails once it writes (a user's mistake only scoring finds, such as NaN
    weights; a full disk) leaves no folder behind that it made."""
    made = first_new_folder(out)
    try:
        yield
    except (InputError, OSError):
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        raise


def sampling_key(args) -> dict:
    """What the cached solutions depend on: reuse them only when all of it is unchanged."""
    return {k: getattr(args, k) for k in ("task", "split", "limit", "model", "num_samples",
                                          "temperature", "max_new_tokens", "seed")}


def read_solutions(args, problems: list) -> tuple[list, dict, dict]:
    """--solutions, someone else's samples: records with problem_id (or question) and steps, each
    one checked; those of other problems are skipped. As verify_solutions returns them."""
    by_q = {p.question.strip(): p for p in problems}
    by_id = {p.id: p for p in problems}
    sols, where = {}, {}
    for n, rec in read_input(args.solutions):
        at = f"{args.solutions}:{n}"
        if "problem_id" not in rec and "question" not in rec:
            raise InputError(f"{at}: expected field 'problem_id' or 'question'")
        pid = text_field(rec, "problem_id", at) if "problem_id" in rec else None
        question = text_field(rec, "question", at).strip() if "question" in rec else None
        steps = steps_field(rec, "steps", at)
        p = by_id.get(pid) or by_q.get(question)
        if p is not None and len(sols.get(p.id, [])) < args.num_samples:
            sols.setdefault(p.id, []).append(steps)
            where.setdefault(p.id, []).append(at)
    problems = [p for p in problems if p.id in sols]
    if not problems:
        raise InputError(f"{args.solutions}: no record's problem_id or question is one of the "
                         f"first {args.limit} {args.task} {args.split} problems")
    return problems, sols, where


def read_samples(path: Path, problems: list) -> tuple[list, dict, dict]:
    """An earlier run's samples (its solutions.jsonl), as verify_solutions returns them."""
    ids, sols, where = {p.id for p in problems}, {}, {}
    for n, rec in read_input(path):
        pid, steps = rec.get("problem_id"), rec.get("steps")
        if not (isinstance(pid, str) and pid in ids and isinstance(steps, list)
                and all(isinstance(s, str) for s in steps)):
            raise InputError(f"{path}:{n}: expected problem_id and steps, as verify writes them "
                             f"(delete it to sample again)")
        sols.setdefault(pid, []).append(steps)
        where.setdefault(pid, []).append(f"{path}:{n}")
    if len(sols) < len(ids):
        raise InputError(f"{path}: {len(ids) - len(sols)} of the problems have no samples "
                         f"(delete it to sample again)")
    return problems, sols, where


def verify_solutions(args, task, problems: list, out: Path, dtype,
                     device) -> tuple[list, dict, dict, str | None]:
    """The solutions verify ranks, as (problems, steps of each problem's solutions, where each
    one comes from, the samples to write or None): read from --solutions, reused from an earlier
    run with the same sampling settings, or sampled by the generator (seeds from ids: the same
    samples on a rerun). Nothing is written here: the caller checks the solutions first."""
    sol_file = out / "solutions.jsonl"
    if args.solutions:
        return (*read_solutions(args, problems), None)
    config = read_own_json(out / "config.json", ("sampling",))
    if sol_file.exists() and config and config["sampling"] == sampling_key(args):
        print(f"reusing {sol_file}")
        return (*read_samples(sol_file, problems), None)
    from sampler import Sampler
    gen, tok = load_model(args.model or task.POLICY_DIR, "--model", dtype, device)
    sampler = Sampler(gen, max_batch=args.batch_size, max_len=gen.config.max_position_embeddings)
    sol_steps, where, lines = {}, {}, []
    for p in progress(problems, desc="sample", unit="problem"):
        prompt = tok.encode(data.format_prompt(p.question))
        outs = sampler.generate(
            [prompt] * args.num_samples, sampler.room([prompt], args.max_new_tokens)[0],
            temperature=args.temperature,
            seeds=[seed_for(args.seed, p.id, j, "verify") for j in range(args.num_samples)])
        sol_steps[p.id] = [data.split_steps(data.from_model_tag(tok.decode(o.tokens), args.tag))
                           for o in outs]
        where[p.id] = [f"--model's sample {j} of problem {p.id}" for j in range(len(outs))]
        lines += [json.dumps({"problem_id": p.id, "index": j, "steps": s}) + "\n"
                  for j, s in enumerate(sol_steps[p.id])]
    return problems, sol_steps, where, "".join(lines)


def check_fits(args, scorers: dict, problems: list, sol_steps: dict, where: dict):
    """Every solution as every scorer reads it (scorers: name -> tokenizer, head, context): one
    tag per step (a step holding the tag would shift every score after it) and whole (cut at the
    context, its last steps would go unscored while its answer still counts)."""
    question = {p.id: p.question for p in problems}
    for name, (tok, head, ctx) in scorers.items():
        style = "shepherd" if name.startswith("LM") else args.rm_format
        for pid, sols in sol_steps.items():
            for steps, at in zip(sols, where[pid]):
                ids = tok.encode(data.to_model_tag(rm_text(question[pid], steps, style), head.text))
                tags = len(tag_positions(ids, head.tag))
                if tags != len(steps):
                    raise InputError(f"{at}: field 'steps': {len(steps)} steps but {tags} step "
                                     f"tags after tokenization")
                if len(ids) > ctx:
                    raise InputError(f"{at}: question + field 'steps': {len(ids)} tokens do not "
                                     f"fit the context of {rm_flag(name)} ({ctx})")


def verify_scores(args, rms: list, caches: dict, problems: list, sol_steps: dict, pairs: list,
                  out: Path, dtype, device):
    """(scores, slips): every solution's step scores by every reward model (scored once, cached
    beside the solutions; caches: name -> what read_own_json read), and each model's last-step
    score of the slip pairs (right, slipped)."""
    scores, slips = {}, {}
    flat = [(p.id, s) for p in problems for s in sol_steps[p.id]]
    question = {p.id: p.question for p in problems}
    todo = [(question[pid], s) for pid, s in flat] + \
           [(q, st) for q, right, slipped in pairs for st in (right, slipped)]
    inputs = hashlib.sha256(json.dumps(todo).encode()).hexdigest()[:16]  # every text, in order
    for name, path in rms:
        key = {"rm": str(Path(path).resolve()) if Path(path).exists() else path, "inputs": inputs,
               "format": "lm" if name.startswith("LM") else args.rm_format,
               "tag": args.tag, "good": args.good, "bad": args.bad}
        if caches[name] and caches[name]["key"] == key:
            scores[name], slips[name] = caches[name]["scores"], caches[name]["slips"]
            continue
        got = score_with(name, path, args, todo, dtype, device)
        if not all(math.isfinite(x) for sc in got for x in sc):
            raise InputError(f"{path}: the reward model's scores are not finite "
                             f"(NaN or inf in its weights?)")
        per = {}
        for (pid, _), sc in zip(flat, got):
            per.setdefault(pid, []).append(sc)
        scores[name] = per
        ends = [sc[-1] for sc in got[len(flat):]]
        slips[name] = [ends[0::2], ends[1::2]]  # the score of the last step: right, slipped
        atomic_write(out / f"scores.{name}.json",
                     json.dumps({"key": key, "scores": per, "slips": slips[name]}) + "\n")
    return scores, slips


def score_with(name: str, path: str, args, todo: list[tuple[str, list[str]]], dtype,
               device) -> list[list[float]]:
    """The step scores of (question, steps) pairs by one reward model, or by an LM ('LM...')."""
    rm, tok = load_model(path, rm_flag(name), dtype, device)
    head = prm_head(tok, args.tag, args.good, args.bad)  # an LM's: only its tag is read
    if not name.startswith("LM"):
        return score_solutions(rm, tok, head, [rm_text(q, st, args.rm_format) for q, st in todo],
                               args.batch_size)
    # an LM reads what the policy writes, from the solution's first token on
    starts = [len(tok.encode(data.to_model_tag(data.format_prompt(q), args.tag), eos=False))
              for q, _ in todo]
    return score_solutions(rm, tok, head, [rm_text(q, st, "shepherd") for q, st in todo],
                           args.batch_size, starts)


def plot_curve(curve: dict, ns: list[int], methods: list[str], path: Path):
    """results.png, when matplotlib is installed (an optional extra)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for m in methods:
            ax.plot(ns, [curve[n][m]["mean"] for n in ns], marker="o", label=m,
                    ls="--" if m == "blind" else "-")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("N (solutions per problem)")
        ax.set_ylabel("accuracy")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    except ImportError:
        pass


def graded(task, problem, solutions: list[list[str]], scores: dict) -> dict:
    """One problem's solutions as best-of-N reads them: each one's answer and text, which answers
    are right, the reward models' step scores, and (where the task knows it) each step's truth."""
    texts = [data.join_steps(s) for s in solutions]
    answers = [task.extract_answer(t) if s else None for t, s in zip(texts, solutions)]
    correct = {a: task.grade(t, problem.answer) for a, t in zip(answers, texts) if a is not None}
    out = {"answers": answers, "correct": correct, "texts": texts, "scores": scores}
    if hasattr(task, "step_truth"):
        out["truth"] = [task.step_truth(problem, s) for s in solutions]
    return out


def report(args, task, problems: list, sol_steps: dict, scores: dict, slips: dict, out: Path):
    """The best-of-N curve and the verifier diagnostics: printed, and written to --out."""
    per_problem = [graded(task, p, sol_steps[p.id], {k: v[p.id] for k, v in scores.items()})
                   for p in problems]
    S = min(len(p["answers"]) for p in per_problem)
    ns = [n for n in (2 ** k for k in range(20)) if n <= S]
    curve = best_of_n_curve(per_problem, ns, args.subsets, args.seed)
    methods = list(curve[ns[0]])
    print(f"\nbest-of-N accuracy on {len(problems)} {args.task} {args.split} problems "
          f"(mean over {args.subsets} random subsets per N; ± std; blind: a verifier that "
          f"cannot tell right from wrong within a problem)")
    print(f"{'N':>4} " + " ".join(f"{m:>16}" for m in methods))
    for n in ns:
        print(f"{n:>4} " + " ".join(f"{curve[n][m]['mean']:>9.3f} ±{curve[n][m]['std']:.3f}"
                                    for m in methods))
    diag = verifier_diagnostics(per_problem)
    for name, (right, slipped) in slips.items():
        if right:
            diag[name]["slip_auc"] = auc(right + slipped, [1.0] * len(right) + [0.0] * len(slipped))
    if diag:
        print("\nverifier diagnostics (AUC: 0.5 = blind; within: right vs wrong solutions of the "
              "same problem; slip: a reference step vs the same with its result off by a little)")
        cols = ["within_auc", "pooled_auc", "step_auc", "within_auc_process", "slip_auc"]
        print(f"{'':>12} " + " ".join(f"{c:>18}" for c in cols))
        for name, d in diag.items():
            print(f"{name:>12} " + " ".join(f"{d.get(c, float('nan')):>18.3f}" for c in cols))
    atomic_write(out / "results.json", json.dumps(
        {"problems": len(problems), "curve": curve, "diagnostics": diag}, indent=1) + "\n")
    atomic_write(out / "results.csv", "N,method,mean,std\n" + "".join(
        f"{n},{m},{curve[n][m]['mean']:.5f},{curve[n][m]['std']:.5f}\n"
        for n in ns for m in methods))
    plot_curve(curve, ns, methods, out / "results.png")


def cmd_verify(args: VerifyConfig) -> int:
    t0 = time.time()
    task = data.get_task(args.task)
    out = Path(args.out)
    dtype = DTYPES[args.dtype]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    problems = task_problems(task, args.task, args.split)[:args.limit]
    rms = [split_rm(kind, spec) for kind, specs in
           (("PRM", args.prm), ("ORM", args.orm), ("LM", args.lm)) for spec in specs or []]
    names = [name for name, _ in rms]
    for name in names:  # two scorers under one name: the second would overwrite the first's column
        if names.count(name) > 1:
            raise InputError(f"{rm_flag(name)}: the name {name} is given twice; name each "
                             f"--prm/--orm/--lm NAME=PATH apart")
    scorers = {}
    for name, path in rms:  # every reward model is checked before anything is written
        rm, tok = load_model(path, rm_flag(name), check_only=True)
        scorers[name] = (tok, prm_head(tok, args.tag, args.good, args.bad),
                         rm.config.max_position_embeddings)
    if not (args.solutions or args.model or hasattr(task, "POLICY_DIR")):
        raise InputError(f"--model is required for task {args.task!r}")
    check_out(out)
    caches = {name: read_own_json(out / f"scores.{name}.json", ("key", "scores", "slips"))
              for name in names}
    problems, sol_steps, where, samples = verify_solutions(args, task, problems, out, dtype, device)
    check_fits(args, scorers, problems, sol_steps, where)
    # where the task can make them: reference steps vs the same with an arithmetic slip
    pairs = task.slip_pairs(problems[:200], args.seed) if hasattr(task, "slip_pairs") else []
    with removed_on_error(out):
        if samples is not None:
            atomic_write(out / "solutions.jsonl", samples)
            atomic_write(out / "config.json", json.dumps({"sampling": sampling_key(args)}) + "\n")
        scores, slips = verify_scores(args, rms, caches, problems, sol_steps, pairs, out, dtype,
                                      device)
        report(args, task, problems, sol_steps, scores, slips, out)
    print(f"wrote {out}/results.json, results.csv ({time.time() - t0:.0f}s)")
    return 0
