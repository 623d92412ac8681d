"""Labeling speed, printed as a table: Shepherd's Labeler against two transformers loops.

    python bench/bench_label.py [--problems 8] [--solutions-per-problem 4] [--num-completions 8]
                                [--repeats 3]
    python bench/bench_label.py --quick        # a seconds-long smoke run

Labeling (Math-Shepherd §3.3): for every non-final step of every solution, N completions from the
prefix that ends at that step, each graded by the task's grader on the prefix's response text + the
completion. The shipped synthetic policy first samples the solutions of K synthetic problems (T 0.7,
fixed seeds); they are written to a temporary file in our records format and every side reads that
file back with label.read_solutions, so all three label the same token prefixes (checked, and
the run stops if they do not):
  1. label.Labeler.label, one call per --group problems (as `shepherd.py label`): each solution
     prefilled once, every step prefix forked from its KV cache, the rollouts of all of them sharing
     the sampler's batches.
  2. the loop a user writes with transformers: one generate(prefix, num_return_sequences=N) per
     step prefix.
  3. a careful transformers loop: all step prefixes of one problem's solutions, left-padded, in one
     generate.
The same N, temperature, max_new_tokens (capped at the context, as the Labeler caps it), grader and
tokenizer (our Tokenizer's decode on every side: the comparison is about generation, not tokenizer
wrappers). The sides take turns (A B C A B C ...), best of --repeats after a warm-up. Prefill tokens
are what a side runs through the model before decoding: transformers repeats each prompt N times
before its prefill; for the Labeler they are counted at its sampler's prefill calls (right padding
included), its own stats beside them. `--device cuda` runs the same functions on a GPU (not run
yet). A benchmark, not a test: it asserts nothing about speed.
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
import data  # noqa: E402
import label  # noqa: E402
from bench_sampler import paired_times, table  # noqa: E402
from model import PRMHead, Tokenizer, Transformer, tag_positions  # noqa: E402
from data.formats import InputError  # noqa: E402
from shepherd import NONNEG, POSITIVE, Parser, device_arg, run_cli  # noqa: E402


def labeler_args(args) -> SimpleNamespace:
    """The fields of `shepherd.py label`'s arguments that the Labeler reads."""
    return SimpleNamespace(seed=0, num_solutions=args.solutions_per_problem,
                           num_completions=args.num_completions, temperature=args.temperature,
                           top_p=1.0, max_new_tokens=args.max_new_tokens,
                           batch_size=args.batch_size)


def write_solutions(args, task, policy, tok, tag, path):
    """K problems' solutions sampled by the policy
    (seeds from the problem ids: the same file on every run)."""
    lab = label.Labeler(labeler_args(args), task, policy, policy, tok, tag)
    rollouts = 0
    with open(path, "w") as f:
        for p in task.load("train", args.problems):
            for sol in lab.sample_solutions([p])[p.id]:
                f.write(json.dumps({"question": p.question, "steps": sol.steps,
                                    "gold": p.answer}) + "\n")
                rollouts += len(sol.steps) - 1
    if not rollouts:  # nothing to time
        raise InputError(f"the policy wrote no step to roll out from (--max-new-tokens "
                         f"{args.max_new_tokens}, --temperature {args.temperature}); expected "
                         f"settings under which it writes whole solutions")


def read_units(path, task) -> list[list[label.Solution]]:
    """The file's solutions grouped by problem: one problem is the unit of work on sides 1 and 3
    (read_solutions makes every record a unit of its own; grouping gives the Labeler's batches
    their intended width)."""
    groups = {}
    for problem, sols in label.read_solutions(str(path), task, False, {"skipped": 0}):
        groups.setdefault(problem.question, []).extend(sols)
    return list(groups.values())


def step_prefixes(tok, sols, tag):
    """(prefix ids, prompt length, gold) for every non-final step:
    the prefixes the Labeler forks."""
    out = []
    for sol in sols:
        prompt, resp = label.solution_tokens(tok, sol, tag)
        for end in tag_positions(resp, tag.tag)[:-1]:
            out.append(((prompt + resp)[:len(prompt) + end + 1], len(prompt), sol.problem.answer))
    return out


def new_result() -> dict:
    return dict(prefixes=[], correct=[], generated=0, prefill=0)


def grade_rows(res, task, tok, ids, prompt_len, rows, gold):
    """Cut each generated row after its eos, count it,
    grade the solution so far + the completion."""
    res["prefixes"].append(tuple(ids))
    res["correct"].append([])
    for row in rows:
        row = row[:row.index(tok.eos_id) + 1] if tok.eos_id in row else row
        res["generated"] += len(row)
        res["correct"][-1].append(int(task.grade(tok.decode(ids[prompt_len:] + row), gold)))


def shepherd_side(args, task, model, tok, tag, units):
    lab = label.Labeler(labeler_args(args), task, None, model, tok, tag)
    comp, res = lab.comp, new_result()
    fork, prefill = comp.fork, comp._prefill

    # the prefixes the Labeler really forks, for the sanity check
    def counting_fork(seqs, forks, *a, **kw):
        res["prefixes"] += [tuple(seqs[s][:t]) for s, t in forks]
        return fork(seqs, forks, *a, **kw)

    # a sampler chunk prefills its sequences right-padded to the longest
    def counting_prefill(seqs, want):
        res["prefill"] += len(seqs) * max(map(len, seqs))
        return prefill(seqs, want)

    # instance attributes: shepherd.py is untouched
    comp.fork, comp._prefill = counting_fork, counting_prefill

    def run():
        res.update(new_result())
        lab.stats = dict.fromkeys(lab.stats, 0)
        # as `shepherd.py label --group`: consecutive problems' solutions labeled in one call
        g = args.group
        records = [r for i in range(0, len(units), g)
                   for r in lab.label([s for u in units[i:i + g] for s in u])]
        res.update(correct=[c for r in records for c in r["rollout_correct"]],
                   generated=lab.stats["generated_tokens"],
                   prefill_stat=lab.stats["prefill_tokens"])
        return dict(res)
    return run


def hf_sample(args, hf, tok, ids, att, new):
    return hf.generate(ids, attention_mask=att, do_sample=True, temperature=args.temperature,
                       top_k=0, num_return_sequences=args.num_completions, max_new_tokens=new,
                       eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)


def hf_per_prefix_side(args, task, hf, tok, tag, units):
    ctx, N = hf.config.max_position_embeddings, args.num_completions

    def run():
        torch.manual_seed(0)  # every call samples the same completions
        res = new_result()
        for sols in units:
            for ids, prompt_len, gold in step_prefixes(tok, sols, tag):
                x = torch.tensor([ids], device=args.device)
                out = hf_sample(args, hf, tok, x, torch.ones_like(x),
                                min(args.max_new_tokens, ctx - len(ids)))
                grade_rows(res, task, tok, ids, prompt_len, out[:, len(ids):].tolist(), gold)
                res["prefill"] += N * len(ids)  # the prompt is expanded N times before the prefill
        return res
    return run


def hf_per_problem_side(args, task, hf, tok, tag, units):
    ctx, N = hf.config.max_position_embeddings, args.num_completions

    def run():
        torch.manual_seed(0)
        res = new_result()
        for sols in units:
            pre = step_prefixes(tok, sols, tag)
            if not pre:
                continue
            S = max(len(ids) for ids, _, _ in pre)
            x = torch.tensor([[tok.pad_id] * (S - len(ids)) + ids for ids, _, _ in pre],
                             device=args.device)
            att = torch.tensor([[0] * (S - len(ids)) + [1] * len(ids) for ids, _, _ in pre],
                               device=args.device)
            # one limit per call: the longest prefix's (equal to --max-new-tokens unless the
            # context cuts it)
            rows = hf_sample(args, hf, tok, x, att,
                             min(args.max_new_tokens, ctx - S))[:, S:].tolist()
            # rows i*N .. i*N+N-1 continue prefix i
            for i, (ids, prompt_len, gold) in enumerate(pre):
                grade_rows(res, task, tok, ids, prompt_len, rows[i * N:(i + 1) * N], gold)
            res["prefill"] += N * len(pre) * S
        return res
    return run


def parse_args(argv=None) -> argparse.Namespace:
    ap = Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=POSITIVE, default=8, help="K synthetic (train) problems")
    ap.add_argument("--solutions-per-problem", type=POSITIVE, default=4)
    ap.add_argument("--num-completions", type=POSITIVE, default=8, help="N per step (the paper: 8)")
    ap.add_argument("--temperature", type=NONNEG, default=0.7)
    ap.add_argument("--max-new-tokens", type=POSITIVE, default=96,
                    help="per solution and per completion")
    ap.add_argument("--batch-size", type=POSITIVE, default=64,
                    help="the Labeler's rows per sampler batch")
    ap.add_argument("--group", type=POSITIVE, default=8,
                    help="problems per Labeler call (shepherd.py label --group)")
    ap.add_argument("--repeats", type=POSITIVE, default=3)
    ap.add_argument("--threads", type=POSITIVE, default=1,
                    help="CPU threads (1: stable numbers on a shared machine)")
    ap.add_argument("--device", type=device_arg, default="cpu")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: 2 problems x 2 solutions, N 4, one repeat, unless those "
                         "flags are given")
    if ap.parse_known_args(argv)[0].quick:  # new defaults: a flag the user gives still wins
        ap.set_defaults(problems=2, solutions_per_problem=2, num_completions=4, repeats=1)
    return ap.parse_args(argv)


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    task = data.get_task("synthetic")
    folder = task.POLICY_DIR
    ours = Transformer.from_pretrained(folder, device=args.device)
    hf = (transformers.MistralForCausalLM.from_pretrained(folder, attn_implementation="sdpa")
          .to(args.device).eval())
    tok = Tokenizer(folder)
    tag = PRMHead.from_tokenizer(tok)  # the step tag, as written and as ids
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "solutions.jsonl"
        write_solutions(args, task, ours, tok, tag, path)
        units = read_units(path, task)

    sides = {"1": shepherd_side(args, task, ours, tok, tag, units),
             "2": hf_per_prefix_side(args, task, hf, tok, tag, units),
             "3": hf_per_problem_side(args, task, hf, tok, tag, units)}
    last = {}
    t = paired_times({k: (lambda k=k, f=f: last.__setitem__(k, f())) for k, f in sides.items()},
                     args.repeats)

    # the comparison holds only if every side rolled out the same prefixes, N completions each
    steps = len(last["1"]["prefixes"])
    for k, r in last.items():
        assert r["prefixes"] == last["1"]["prefixes"], \
            f"side {k} labels other step prefixes than side 1"
        assert (len(r["correct"]) == steps
                and all(len(c) == args.num_completions for c in r["correct"])), \
            f"side {k}: not {args.num_completions} graded completions for each of the {steps} steps"

    sol_tokens = sum(sum(map(len, label.solution_tokens(tok, s, tag)))
                     for sols in units for s in sols)
    n_sols = sum(map(len, units))
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {args.device}, "
          f"{torch.get_num_threads()} thread(s); "
          f"the synthetic policy ({ours.num_params() / 1e6:.2f} M params)")
    print(f"{len(units)} problems, {n_sols} solutions ({sol_tokens} prompt + response tokens), "
          f"{steps} steps with rollouts; N {args.num_completions}, T {args.temperature}, "
          f"up to {args.max_new_tokens} new tokens; "
          f"best of {args.repeats}, the sides taking turns\n")
    names = {"1": "1. shepherd Labeler (prefill once, fork)",
             "2": "2. transformers, generate per step prefix",
             "3": "3. transformers, generate per problem (left-padded)"}
    speed = {k: steps / t[k] for k in t}
    rows = []
    for k, r in last.items():
        flat = [x for c in r["correct"] for x in c]
        prefill = f"{r['prefill'] / sol_tokens:.2f}"
        if "prefill_stat" in r:
            prefill += f" (stats: {r['prefill_stat'] / sol_tokens:.2f})"
        rows.append([names[k], f"{speed[k]:.1f}", f"{r['generated'] / t[k]:,.0f}", prefill,
                     f"{t[k]:.2f}", f"{sum(flat) / len(flat):.3f}",
                     f"{speed['1'] / speed[k]:.2f}x"])
    table(rows, ["side", "steps labeled/s (non-final steps, N rollouts each)", "generated tok/s",
                 "prefill tok / solution tok", "s per run", "rollouts correct", "side 1 vs this"])

    met = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    prefill_ratio = last["1"]["prefill"] / sol_tokens
    print(f"goal side 1 >= 5x side 2 (steps labeled/s): {speed['1'] / speed['2']:.2f}x, "
          f"{met(speed['1'] >= 5 * speed['2'])}")
    print(f"goal side 1 >= 2x side 3 (steps labeled/s): {speed['1'] / speed['3']:.2f}x, "
          f"{met(speed['1'] >= 2 * speed['3'])}")
    print(f"goal side 1 prefill <= 1.1x solution tokens: {prefill_ratio:.2f}x, "
          f"{met(prefill_ratio <= 1.1)}")


if __name__ == "__main__":
    sys.exit(run_cli(lambda _: main() or 0, None, "a benchmark writes nothing"))
