"""Labeling: automatic process annotation by Monte-Carlo completions (Math-Shepherd §3.3).

    python shepherd.py label

For every step of a solution, N completions from the prefix that ends at it; the step's label
is whether any reaches the answer (hard, Eq. 3) or the fraction that do (soft, Eq. 4).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import data
from data.formats import FINISHED, InputError, export, label_sidecar, parse_solution, read_input
from model import DTYPES, PRMHead, Tokenizer, tag_positions
from shepherd import (COUNT, NONNEG, POSITIVE, Common, Dist, atomic_write, barrier, check_settings,
                      file_digest, first_new_folder, flag, in_range, init_distributed, load_model,
                      prm_head, progress, same_tokenizer, seed_for, task_problems)


def hard_label(correct: list[bool]) -> int:
    """Math-Shepherd Eq. 3 (hard estimation): 1 if ANY completion from the step reaches the gold."""
    return int(any(correct))


def soft_label(correct: list[bool]) -> float:
    """Math-Shepherd Eq. 4 (soft estimation): the FRACTION of completions that reach the gold."""
    return sum(correct) / len(correct)


@dataclass
class Solution:
    """A solution to label: its steps, and (when we sampled it) its tokens after the prompt."""
    problem: data.Problem
    index: int  # which of the problem's solutions
    steps: list[str]
    tokens: list[int] | None = None  # response tokens, ending with the last step's tag

    @property
    def id(self) -> str:
        return f"{self.problem.id}/{self.index}"


def solution_tokens(tok: Tokenizer, sol: Solution, head: PRMHead) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids), the response cut after its last tag (no EOS or trailing text)."""
    prompt = tok.encode(data.format_prompt(sol.problem.question))
    resp = sol.tokens
    if resp is None:  # read from a file: tokenise prompt + steps as one text, as the policy would
        steps = data.to_model_tag(data.join_steps(sol.steps), head.text)
        full = tok.encode(data.format_prompt(sol.problem.question) + steps)
        resp = full[len(prompt):] if full[:len(prompt)] == prompt else tok.encode(steps, bos=False)
    ends = tag_positions(resp, head.tag)
    return prompt, resp[:ends[-1] + 1] if ends else resp


class Labeler:
    """Labels one problem's solutions at a time: a fixed unit of work, so results never depend on
    what else shares a run (resumes and torchrun shards give byte-identical records)."""

    def __init__(self, args, task, generator, completer, tok: Tokenizer, head: PRMHead):
        from sampler import Sampler
        self.args, self.task, self.tok, self.head = args, task, tok, head  # head: the step tag
        self.comp = Sampler(completer, max_batch=args.batch_size,
                            max_len=completer.config.max_position_embeddings)
        self.gen = None if generator is None else self.comp if generator is completer else \
            Sampler(generator, max_batch=args.batch_size,
                    max_len=generator.config.max_position_embeddings)
        self.stats = dict(problems=0, solutions=0, steps=0, rollouts=0, generated_tokens=0,
                          prefill_tokens=0, skipped=0)

    def sample_solutions(self, problems: list[data.Problem]) -> dict[str, list[Solution]]:
        """num_solutions samples per problem (one generate call for all), by problem id."""
        a, tok, n = self.args, self.tok, self.args.num_solutions
        if not problems:
            return {}
        prompts = [tok.encode(data.format_prompt(p.question)) for p in problems]
        ctx = self.gen.model.config.max_position_embeddings
        for p, prompt in zip(problems, prompts):
            if len(prompt) >= ctx:
                raise InputError(f"{p.id}: the prompt ({len(prompt)} tokens) does not fit the "
                                 f"generator's context")
        seeds = [seed_for(a.seed, p.id, j, "solution") for p in problems for j in range(n)]
        rows = [x for x in prompts for _ in range(n)]
        outs = self.gen.generate(rows, self.gen.room(rows, a.max_new_tokens),
                                 temperature=a.temperature, top_p=a.top_p, seeds=seeds)
        self.stats["prefill_tokens"] += sum(map(len, prompts)) * n
        sols = {p.id: [] for p in problems}
        for k, o in enumerate(outs):
            problem, j = problems[k // n], k % n
            self.stats["generated_tokens"] += len(o.tokens)
            steps = data.split_steps(data.from_model_tag(tok.decode(o.tokens), self.head.text))
            ends = tag_positions(o.tokens, self.head.tag)
            if not steps or len(ends) != len(steps):  # no tagged step, or text after the last tag
                steps = steps[:len(ends)]
            if not steps:
                self.stats["skipped"] += 1
                continue
            tokens = o.tokens[:ends[len(steps) - 1] + 1]
            sols[problem.id].append(Solution(problem, j, steps, tokens))
        return sols

    def check_fits(self, sol: Solution, prompt=None, resp=None):
        """A solution whose prompt + steps leave no room in the completer's context is bad input,
        as is one whose text holds the tag inside a step (its labels would land on other steps)."""
        where = sol.problem.meta.get("where", sol.id)
        if prompt is None:
            prompt, resp = solution_tokens(self.tok, sol, self.head)
            tags = len(tag_positions(resp, self.head.tag))
            if tags != len(sol.steps):
                raise InputError(f"{where}: field 'steps': {len(sol.steps)} steps but {tags} step "
                                 f"tags {self.head.text!r} once tokenised; expected the tag in no "
                                 f"step's text (or another --tag)")
        ctx = self.comp.model.config.max_position_embeddings
        if len(prompt) + len(resp) >= ctx:
            raise InputError(f"{where}: fields 'question' + steps: {len(prompt) + len(resp)} "
                             f"tokens do not fit the completer's context ({ctx})")

    def label(self, sols: list[Solution]) -> list[dict]:
        """One prefill per solution; N rollouts forked from each non-final step, sharing batches."""
        a, tok = self.args, self.tok
        seqs, prompt_lens, forks, seeds = [], [], [], []
        for s, sol in enumerate(sols):
            prompt, resp = solution_tokens(tok, sol, self.head)
            prompt_lens.append(len(prompt))
            self.check_fits(sol, prompt, resp)
            seqs.append(prompt + resp)
            for k, end in enumerate(tag_positions(resp, self.head.tag)[:-1]):  # last: no rollouts
                forks.append((s, len(prompt) + end + 1, k))
                # one seed per step: the sampler derives each completion's from it
                seeds.append(seed_for(a.seed, sol.id, k, "rollouts"))
        ctx = self.comp.model.config.max_position_embeddings
        limits = [min(a.max_new_tokens, ctx - t) for _, t, _ in forks]  # never past the context
        outs = self.comp.fork(seqs, [(s, t) for s, t, _ in forks], limits,
                              num_samples=a.num_completions, temperature=a.temperature,
                              top_p=a.top_p, seeds=seeds) if forks else []
        self.stats["prefill_tokens"] += sum(map(len, seqs))
        # per solution, per rolled-out step: each completion's final answer and whether it is right
        answers = [[[] for _ in sol.steps[:-1]] for sol in sols]
        correct = [[[] for _ in sol.steps[:-1]] for sol in sols]
        for (s, t, k), group in zip(forks, outs):
            for o in group:
                self.stats["generated_tokens"] += len(o.tokens)
                text = data.from_model_tag(tok.decode(seqs[s][prompt_lens[s]:t] + o.tokens),
                                           self.head.text)
                answers[s][k].append(self.task.extract_answer(text))
                correct[s][k].append(self.task.grade(text, sols[s].problem.answer))
        records = []
        for s, sol in enumerate(sols):
            p = sol.problem
            own = self.task.extract_answer(data.join_steps(sol.steps))
            outcome = self.task.grade(data.join_steps(sol.steps), p.answer)
            rec = {"id": sol.id, "problem_id": p.id, "question": p.question, "gold": p.answer,
                   "steps": sol.steps, "answer": own, "correct": outcome,
                   "hard": [hard_label(c) for c in correct[s]] + [int(outcome)],  # last: graded
                   "soft": [soft_label(c) for c in correct[s]] + [float(outcome)],
                   "rollout_answers": answers[s],
                   "rollout_correct": [[int(x) for x in c] for c in correct[s]]}
            try:  # the exact step truth, where the task knows it (the synthetic world's problems)
                rec["truth"] = [int(x) for x in self.task.step_truth(p, sol.steps)]
            except (AttributeError, ValueError):
                pass
            records.append(rec)
            self.stats["steps"] += len(sol.steps)
            self.stats["rollouts"] += a.num_completions * (len(sol.steps) - 1)
        self.stats["solutions"] += len(sols)
        return records


def read_solutions(path: str, task, skip_bad: bool,
                   stats: dict) -> list[tuple[data.Problem, list[Solution]]]:
    """Solutions someone else generated, in any format parse_solution reads. The gold answer is a
    'gold'/'answer' field, or the task's problem with that question; its grader must read it."""
    def checked(n, rec):
        r = parse_solution(rec, f"{path}:{n}")
        if r.gold is not None and not task.grade(f"{data.ANSWER_PREFIX} {r.gold}", r.gold):
            raise InputError(f"{path}:{n}: field 'gold': {r.gold!r} is not an answer the "
                             f"{task.__name__} grader can read")
        return n, r
    records = []
    for n, rec in read_input(path):  # the whole file is checked before loading the task's problems
        try:
            records.append(checked(n, rec))
        except InputError:
            if not skip_bad:
                raise
            stats["skipped"] += 1
    known = {}
    for split in ("train", "test"):
        try:
            known.update({p.question.strip(): p for p in task.load(split)})
        except Exception:  # a task whose data is not available here: only explicit gold fields then
            pass
    units, lines = [], {}
    for n, r in records:
        problem = known.get(r.question.strip())
        if problem is None and r.gold is None:
            if not skip_bad:
                raise InputError(f"{path}:{n}: field 'gold': no gold answer (and no "
                                 f"{task.__name__} problem with this question)")
            stats["skipped"] += 1
            continue
        meta = problem.meta if problem is not None else {}
        pid = r.id or (f"{problem.id}@{Path(path).stem}-{n}" if problem is not None
                       else f"{Path(path).stem}-{n}")
        if pid in lines:  # ids name the units a resume skips, and seed the rollouts
            if not skip_bad:
                raise InputError(f"{path}:{n}: field 'id': {pid!r} is also line {lines[pid]}'s; "
                                 f"expected unique ids")
            stats["skipped"] += 1
            continue
        lines[pid] = n
        gold = r.gold if r.gold is not None else problem.answer
        problem = data.Problem(pid, r.question.strip(), gold, {**meta, "where": f"{path}:{n}"})
        units.append((problem, [Solution(problem, 0, r.steps)]))
    return units


class Progress:
    """Resumable output: records appended and flushed unit by unit. A sidecar file holds the
    settings that made them (first line), then the finished units, each with the byte offset where
    its records end. On restart, anything past the last finished unit (a torn line, a unit cut off
    by SIGKILL) is cut away and redone. The sidecar is also a lock against a second writer."""

    def __init__(self, path: Path, settings: dict, restart: bool = False):
        self.path, self.side = path, label_sidecar(path)
        if path.is_dir() or (path.exists() and not self.side.exists()):
            raise InputError(f"{path}: --out exists and is not a label output; "
                             f"remove it or choose another --out")
        # the first folder this run creates: removed along with the files
        self.made = first_new_folder(path.parent)
        path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.side.exists()
        self.fside = open(self.side, "a+")
        try:
            self._open(settings, restart)
        except BaseException as e:
            try:
                self.fside.close()
            except OSError:
                pass
            if created:
                self.side.unlink(missing_ok=True)
                self.made and shutil.rmtree(self.made, ignore_errors=True)
            if isinstance(e, OSError) and e.filename is None:
                raise OSError(e.errno, e.strerror, str(self.side)) from None
            raise

    def _open(self, settings: dict, restart: bool):
        path = self.path
        try:
            fcntl.flock(self.fside, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fside.close()
            raise InputError(f"{path}: another process is writing this output "
                             f"(its lock: {self.side})") from None
        self.fside.seek(0)
        lines = self.fside.read().splitlines()
        saved = (json.loads(lines[0]).get("settings")
                 if lines and lines[0].startswith('{"settings"') else None)
        self.done, end = {}, 0
        if lines and not restart and path.exists():
            check_settings(path, saved, settings, flag=lambda k: f"{k}:")  # digests are no flags
            for line in lines[1:]:
                try:
                    entry = json.loads(line)
                    self.done[entry["unit"]] = end = entry["end"]
                except (json.JSONDecodeError, KeyError):
                    break  # a torn last line: that unit is redone
        if not self.done:
            self.fside.truncate(0)
            self.fside.write(json.dumps({"settings": settings}) + "\n")
        else:  # keep the settings and the finished units, drop a torn last line
            self.fside.truncate(0)
            self.fside.write("\n".join(lines[:1 + len(self.done)]) + "\n")
        self.fside.flush()
        with open(self.path, "ab") as f:
            f.truncate(end)
        self.f = open(self.path, "ab")

    def write(self, unit: str, records: list[dict]):
        try:
            lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
            self.f.write(lines.encode())
            self.f.flush()
            self.fside.write(json.dumps({"unit": unit, "end": self.f.tell()}) + "\n")
            self.fside.flush()
        except OSError as e:  # a full disk: the units finished so far stay, for the resume
            raise OSError(e.errno, e.strerror, str(self.path)) from None
        self.done[unit] = self.f.tell()

    def close(self, remove: bool = False, finished: bool = False):
        """remove: nothing was finished (the run failed before its first unit), so keep nothing.
        finished: every unit is written, and readers may take the output (data.formats)."""
        try:
            self.f.close()
        except OSError:  # the disk filled during the last unit: it is torn, and cut away on resume
            pass
        if finished:  # a resume reads the units before this line and drops it
            try:
                self.fside.write(FINISHED + "\n")
                self.fside.flush()
            except OSError as e:
                self.fside.close()
                raise OSError(e.errno, e.strerror, str(self.side)) from None
        if remove:
            self.path.unlink(missing_ok=True)
            self.side.unlink(missing_ok=True)
            self.made and shutil.rmtree(self.made, ignore_errors=True)
        try:
            self.fside.close()
        except OSError:
            pass


def checkpoint_digest(folder) -> str:
    """What identifies a checkpoint without reading 14 GB: config, tokenizer, and each weight
    file's size, first and last MiB (the safetensors header and tensors at both ends)."""
    h = hashlib.sha256()
    for f in sorted(Path(folder).iterdir()):
        if f.name in ("config.json", "tokenizer.json") or f.suffix == ".safetensors":
            h.update(f"{f.name}:{f.stat().st_size}".encode())
            with open(f, "rb") as fh:
                h.update(fh.read(2**20))
                fh.seek(max(0, f.stat().st_size - 2**20))
                h.update(fh.read())
    return h.hexdigest()[:16]


def quality_report(records: list[dict], max_n: int) -> dict:
    """Label accuracy against the exact step truth (the synthetic world), for N = 1, 2, 4, ...
    completions: the analogue of Math-Shepherd Table 4 / §5.2. Steps with rollouts only (the last
    step is graded, not estimated)."""
    report = {}
    for n in [k for k in (1, 2, 4, 8, 16, 32) if k <= max_n]:
        for kind in ("hard", "soft"):
            tp = fp = tn = fn = 0
            for r in records:
                for truth, c in zip(r["truth"], r["rollout_correct"]):
                    y = hard_label(c[:n]) if kind == "hard" else int(soft_label(c[:n]) >= 0.5)
                    tp, fp, tn, fn = (tp + (y and truth), fp + (y and not truth),
                                      tn + (not y and not truth), fn + (not y and truth))
            total = tp + fp + tn + fn
            report[f"{kind}@{n}"] = {
                "N": n, "labels": kind, "steps": total,
                "accuracy": (tp + tn) / total if total else float("nan"),
                "false_positive_rate": fp / (fp + tn) if fp + tn else float("nan"),
                "false_negative_rate": fn / (fn + tp) if fn + tp else float("nan")}
    return report


def show(records: list[dict], k: int):
    """The teaching view: each step, its completions' final answers, the labels (and the truth)."""
    for r in records[:k]:
        print(f"\n=== {r['id']}  gold {r['gold']}  answer {r['answer']}  "
              f"({'correct' if r['correct'] else 'wrong'})")
        print(r["question"])
        for i, step in enumerate(r["steps"]):
            truth = f"  truth {r['truth'][i]}" if "truth" in r else ""
            if i < len(r["rollout_answers"]):
                ans = " ".join("∅" if a is None else str(a) for a in r["rollout_answers"][i])
                print(f"  step {i + 1}: {step:<34} completions → [{ans}]  "
                      f"hard {r['hard'][i]} soft {r['soft'][i]:.2f}{truth}")
            else:
                print(f"  step {i + 1}: {step:<34} (last step: graded)  "
                      f"hard {r['hard'][i]} soft {r['soft'][i]:.2f}{truth}")


@dataclass
class LabelConfig(Common):
    """Automatic process annotation by Monte-Carlo completions (Math-Shepherd §3.3).

    For each problem, sample solutions; from the prefix ending at every step sample N completions;
    grade them; label the step hard (Eq. 3: any right) and soft (Eq. 4: fraction right).
    Resumable: rerun the same command to continue."""
    dtype: str = flag("float32", "weights' dtype", choices=list(DTYPES))
    task: str = flag("synthetic", choices=list(data.TASKS))
    split: str = flag("train", "which problems of the task to label")
    limit: int = flag(50, "label the first LIMIT problems", type=POSITIVE)
    model: str | None = flag(None, "generator of the solutions (default: the synthetic world's "
                             "tiny policy)")
    completer: str | None = flag(None, "model for the rollouts (default: the generator)")
    solutions: str | None = flag(None, "label these solutions instead of sampling "
                                 "(Math-Shepherd or stepwise jsonl)")
    num_solutions: int = flag(4, "solutions sampled per problem", type=POSITIVE)
    num_completions: int = flag(8, "N, completions per step (the paper: 8)", type=POSITIVE)
    temperature: float = flag(0.7, type=NONNEG)
    top_p: float = flag(1.0, type=in_range(float, 0, 1, lo_open=True))
    max_new_tokens: int = flag(128, "per solution and per completion", type=POSITIVE)
    batch_size: int = flag(64, "rows per sampler batch", type=POSITIVE)
    group: int = flag(8, "problems (or input records) sampled and labeled in shared batches: the "
                      "unit of work that a resume redoes, and that torchrun ranks share out",
                      type=POSITIVE)
    out: str = flag("runs/labels.jsonl", "records (JSONL); exports and the quality report go "
                    "beside it")
    format: tuple = flag(("records",), "extra exports written beside --out", nargs="+",
                         choices=["records", "math-shepherd", "stepwise"])
    export_labels: str = flag("hard", "labels in the stepwise export (soft: floats, which TRL's "
                              "int(label) reads as 0 below 1; soft-threshold: soft >= 0.5 as "
                              "booleans)", choices=["hard", "soft", "soft-threshold"])
    show: int = flag(0, "print K worked examples", type=COUNT, metavar="K")
    skip_bad: bool = flag(False, "count and skip bad input records instead of stopping")
    restart: bool = flag(False, "start --out afresh instead of resuming it")


# what a label output depends on: resuming with one changed would mix records made two ways
LABEL_SETTINGS = ("task", "split", "limit", "model", "completer", "solutions", "num_solutions",
                  "num_completions", "temperature", "top_p", "max_new_tokens", "group", "seed",
                  "tag", "dtype", "skip_bad")


def label_units(args, task, labeler) -> list[tuple]:
    """What label works on, as (problem, its given solutions or None to sample them): the task's
    first --limit problems, or the --solutions records, each checked to fit the completer's
    context before anything is written."""
    if not args.solutions:
        return [(p, None) for p in task_problems(task, args.task, args.split)[:args.limit]]
    fits = []
    for unit in read_solutions(args.solutions, task, args.skip_bad, labeler.stats):
        try:
            labeler.check_fits(unit[1][0])
            fits.append(unit)
        except InputError:
            if not args.skip_bad:
                raise
            labeler.stats["skipped"] += 1
    return fits


def check_label_out(args, out: Path, world: int):
    """--out is not the input, and under torchrun it is a label output or nothing yet."""
    if args.solutions:
        written = [out, out.with_suffix(".quality.json"),
                   *(out.with_suffix(f".{f}.jsonl") for f in args.format if f != "records")]
        for path in written:
            if Path(args.solutions).resolve() == path.resolve():
                what = ("--out is" if path == out else "an export of --out would overwrite")
                raise InputError(f"{path}: {what} the --solutions input; choose another --out")
    if world > 1 and (out.is_dir() or (
            out.exists() and not label_sidecar(out).exists())):
        raise InputError(f"{out}: --out exists and is not a label output; "
                         f"remove it or choose another --out")


def merge_shards(out: Path, groups: list, settings: dict, stats: dict, d: Dist) -> dict:
    """torchrun label: rank 0 merges the ranks' shards into --out in the single-process order,
    with the progress sidecar a single process would have left. Returns the summed counts."""
    gathered = [None] * d.world
    torch.distributed.all_gather_object(gathered, stats)
    barrier(d)
    if d.main:
        write_merged(out, groups, settings, d.world)
    barrier(d)
    return {k: sum(g[k] for g in gathered) for k in stats}


def write_merged(out: Path, groups: list, settings: dict, world: int):
    by_unit = {}
    for r in range(world):
        part = out.parent / f".{out.name}.rank{r}-of-{world}"
        with open(part, encoding="utf-8") as f:  # not splitlines: U+2028 may sit in a record
            for line in f:
                by_unit.setdefault(json.loads(line)["problem_id"], []).append(line)
    text, ends = "", []
    for group in groups:
        text += "".join(line for p, _ in group for line in by_unit.get(p.id, []))
        ends.append(json.dumps({"unit": group[0][0].id, "end": len(text.encode())}) + "\n")
    atomic_write(out, text)
    atomic_write(label_sidecar(out),
                 json.dumps({"settings": settings}) + "\n" + "".join(ends) + FINISHED + "\n")
    for r in range(world):
        part = out.parent / f".{out.name}.rank{r}-of-{world}"
        part.unlink()
        label_sidecar(part).unlink()


def print_quality(report: dict):
    print("\nlabel quality against the exact step truth (steps with rollouts):")
    print(f"  {'N':>3} {'labels':<6} {'steps':>6} {'accuracy':>9} {'FP rate':>8} {'FN rate':>8}")
    for r in report.values():
        print(f"  {r['N']:>3} {r['labels']:<6} {r['steps']:>6} {r['accuracy']:>9.3f} "
              f"{r['false_positive_rate']:>8.3f} {r['false_negative_rate']:>8.3f}")


def label_models(args: LabelConfig, task, device) -> tuple:
    """(generator, or None when --solutions are given; completer; their tokenizer), checked to
    read the same tokens."""
    dtype = DTYPES[args.dtype]
    model_path = args.model or getattr(task, "POLICY_DIR", None)
    if model_path is None:
        raise InputError(f"--model is required for task {args.task!r}")
    if (args.task == "synthetic" and model_path == task.POLICY_DIR
            and not Path(model_path, "config.json").exists()):
        raise InputError(f"{model_path}: the tiny policy is missing; "
                         f"build it with: {task.POLICY_COMMAND}")
    generator, gen_tok = (None, None) if args.solutions else \
        load_model(model_path, "--model", dtype, device)
    if args.completer is None and generator is not None:
        return generator, generator, gen_tok
    completer, tok = load_model(args.completer or model_path,
                                "--completer" if args.completer else "--model", dtype, device)
    if gen_tok is not None:
        same_tokenizer(gen_tok, tok, "the completer")
    return generator, completer, tok


def label_report(args: LabelConfig, out: Path, stats: dict, seconds: tuple[float, float]):
    """After labeling: the exports, worked examples, label quality (where the truth is known)
    and the counts. seconds: (labeling, in all)."""
    records = [r for _, r in data.read_jsonl(out)]
    for fmt in args.format:
        if fmt != "records":
            atomic_write(out.with_suffix(f".{fmt}.jsonl"),
                         export(records, fmt, args.task, args.export_labels))
    if args.show:
        show(records, args.show)
    audited = [r for r in records if "truth" in r]
    if audited:
        report = quality_report(audited, args.num_completions)
        atomic_write(out.with_suffix(".quality.json"), json.dumps(report, indent=2) + "\n")
        print_quality(report)
    work, tokens = max(seconds[0], 1e-9), stats["generated_tokens"]
    print(f"\nlabeled {stats['problems']} problems, {stats['solutions']} solutions, "
          f"{stats['steps']} steps ({stats['rollouts']} rollouts); skipped {stats['skipped']}")
    print(f"tokens: {tokens} generated, {stats['prefill_tokens']} prefilled; "
          f"{tokens / work:.0f} tok/s, {stats['steps'] / work:.1f} "
          f"steps labeled/s; {seconds[1]:.1f}s in all")
    print(f"wrote {out} ({len(records)} records)")


def cmd_label(args: LabelConfig) -> int:
    d = init_distributed(args.device)
    t0 = time.time()
    task = data.get_task(args.task)
    out = Path(args.out)
    generator, completer, tok = label_models(args, task, d.device)
    labeler = Labeler(args, task, generator, completer, tok, prm_head(tok, args.tag))
    units = label_units(args, task, labeler)
    # the unit of work (see Labeler): --group consecutive problems (or input records)
    groups = [units[i:i + args.group] for i in range(0, len(units), args.group)]
    mine = groups[d.rank::d.world]  # a disjoint shard of units per rank
    shard = out if d.world == 1 else out.parent / f".{out.name}.rank{d.rank}-of-{d.world}"
    check_label_out(args, out, d.world)
    settings = {k: getattr(args, k) for k in LABEL_SETTINGS}
    settings.update(
        generator_digest=None if generator is None else checkpoint_digest(generator.source_dir),
        completer_digest=checkpoint_digest(completer.source_dir),
        input_digest=args.solutions and file_digest(args.solutions))
    # the first byte written: everything above is validation
    prog = Progress(shard, settings, args.restart)
    todo = [g for g in mine if g[0][0].id not in prog.done]
    if d.main and len(todo) < len(mine):
        print(f"resuming {out}: {len(mine) - len(todo)} of {len(mine)} units of {args.group} "
              f"already labeled")
    t_work = time.time()
    bar = progress(total=sum(map(len, todo)), d=d, desc="label", unit="problem")
    try:
        for group in todo:
            sampled = labeler.sample_solutions([p for p, sols in group if sols is None])
            sols = [s for p, given in group
                    for s in (given if given is not None else sampled.get(p.id, []))]
            prog.write(group[0][0].id, labeler.label(sols) if sols else [])
            labeler.stats["problems"] += len(group)
            bar.update(len(group))
    except BaseException:
        bar.close()  # the error then starts a line of its own
        prog.close(remove=not prog.done)  # finished units are kept for the resume
        raise
    bar.close()
    prog.close(finished=True)
    work_s = time.time() - t_work
    stats = labeler.stats
    if d.world > 1:  # rank 0 merges the shards in the single-process order
        stats = merge_shards(out, groups, settings, stats, d)
    if d.main:
        label_report(args, out, stats, (work_s, time.time() - t0))
    return 0
