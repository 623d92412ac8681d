"""Math-Shepherd's claims, reproduced in the synthetic world on a laptop:

    python bench/reproduce.py --out runs/reproduce [--seeds 0 1 2] [--quick]

For every seed: label the policy's solutions by Monte-Carlo completions (§3.3) -> train PRM-hard,
PRM-soft (Eq. 2) and an ORM (Eq. 1) from the verifier base -> best-of-N with each, self-consistency
and RM-weighted voting (Table 1) -> step-by-step PPO with the PRM, ORM-PPO, and step-PPO with the
exact step truth as an oracle PRM (§3.5, Table 2). The first seed also walks the verifier-capacity
curve (how the verifier's base and its label count move the slip and within-problem AUCs and
best-of-64).

Every stage is one of the project's own commands (shepherd.py label / train / verify, ppo.py), run
as a subprocess with its output in DIR/seedS/STAGE.log: nothing here grows a second copy of a stage.
A finished stage leaves DIR/seedS/STAGE.done and is never run again; an interrupted one is rerun and
resumes (each command does). Stages that do not depend on each other run side by side (--jobs, one
thread each: on a busy 2-core machine two one-thread processes do more work than one process with
two threads). At the end DIR/report.md gathers the tables, with PNG figures beside it when
matplotlib is installed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import data  # noqa: E402
from data import synthetic  # noqa: E402
from shepherd import (POSITIVE, SEED, InputError, Parser, atomic_write, load_model,  # noqa: E402
                      same_tokenizer)


@dataclass
class Sizes:
    """How big each stage is. The defaults are the recipe README reports;
    --quick shrinks them (same code path)."""
    label_problems: int = synthetic.RM_RECIPE["problems"]  # train problems labeled per seed
    solutions: int = synthetic.RM_RECIPE["solutions"]  # sampled per problem (the paper: 15)
    completions: int = synthetic.RM_RECIPE["completions"]  # N per step (the paper: 8)
    rm_steps: int = synthetic.RM_RECIPE["steps"]  # reward-model fine-tuning steps (batch rm_batch)
    rm_batch: int = synthetic.RM_RECIPE["batch"]
    rm_lr: float = synthetic.RM_RECIPE["lr"]
    verify_problems: int = 100  # test problems for best-of-N
    samples: int = 64  # solutions per test problem (N up to this)
    subsets: int = 100  # random subsets per N
    # iterations x ppo_batch rollouts (ppo.py's defaults are 30 x 128: 3x this, ~20 CPU-min a run)
    ppo_iterations: int = 20
    ppo_batch: int = 64
    ppo_minibatch: int = 32
    eval_problems: int = 500  # PPO's held-out (val) greedy accuracy
    test_problems: int = 500  # greedy test accuracy of SFT and of each PPO policy
    # label fractions of the capacity curve (first seed; () skips it): 400 problems
    capacity: tuple = (0.16,)


QUICK = Sizes(label_problems=40, solutions=4, completions=4, rm_steps=40, verify_problems=30,
              samples=16, subsets=20, ppo_iterations=4, ppo_batch=32, ppo_minibatch=32,
              eval_problems=100, test_problems=100, capacity=(0.5,))


@dataclass
class Stage:
    name: str  # also the folder (or file) it writes under the seed's folder
    argv: list  # the command: [script, args...]
    after: tuple = ()  # stages it needs


def seed_stages(d: Path, seed: int, z: Sizes, policy: str, verifier: str,
                first: bool, completer: str | None = None) -> list[Stage]:
    """The stages of one seed, in an order that respects their dependencies."""
    labels = str(d / "label" / "labels.jsonl")
    common = ["--seed", str(seed)]

    def train(name, objective, kind, base, data_file, steps):
        return Stage(name, ["shepherd.py", "train", "--objective", objective, "--labels", kind,
                            "--data", data_file, "--model", base, "--steps", str(steps),
                            "--batch-size", str(z.rm_batch), "--lr", str(z.rm_lr),
                            "--warmup", str(max(1, steps // 20)), "--eval-every", str(steps),
                            "--heldout", "0.05", "--out", str(d / name), *common], ("label",))

    def label(name, problems):
        return Stage(name, ["shepherd.py", "label", "--split", "train", "--limit", str(problems),
                            "--num-solutions", str(z.solutions),
                            "--num-completions", str(z.completions), "--max-new-tokens", "96",
                            "--model", policy, *(["--completer", completer] if completer else []),
                            "--out", str(d / name / "labels.jsonl"), *common])
    stages = [label("label", z.label_problems),
              train("prm_hard", "prm", "hard", verifier, labels, z.rm_steps),
              train("prm_soft", "prm", "soft", verifier, labels, z.rm_steps),
              train("orm", "orm", "hard", verifier, labels, z.rm_steps)]
    verify = ["shepherd.py", "verify", "--split", "test", "--limit", str(z.verify_problems),
              "--model", policy, "--num-samples", str(z.samples), "--subsets", str(z.subsets),
              "--out", str(d / "verify"), *common]
    # sampling the test solutions needs no reward model: it runs beside the training, and verify
    # reuses the samples
    stages.append(Stage("samples", verify))
    # LM-base: the verifier base's own token probabilities, a reference for what it knows
    rms = ["--prm", f"hard={d / 'prm_hard'}", "--prm", f"soft={d / 'prm_soft'}",
           "--orm", str(d / "orm"), "--lm", f"base={verifier}"]
    stages.append(Stage("verify", verify + rms, ("samples", "prm_hard", "prm_soft", "orm")))
    # truth: the same loop with the exact step truth as the PRM (an oracle: what step-PPO gives a
    # verifier that sees every error; its critic starts from the PRM-hard, as the prm run's does)
    for reward, rm in (("prm", "prm_hard"), ("orm", "orm"), ("truth", "prm_hard")):
        stages.append(Stage(f"ppo_{reward}", [
            "ppo.py", "--reward", reward, "--reward-model", str(d / rm), "--policy", policy,
            "--iterations", str(z.ppo_iterations), "--batch-size", str(z.ppo_batch),
            "--minibatch-size", str(z.ppo_minibatch),
            "--micro-batch", str(min(16, z.ppo_minibatch)),
            "--eval-problems", str(z.eval_problems), "--test-problems", str(z.test_problems),
            "--quiet", "--out", str(d / f"ppo_{reward}"), *common], (rm,)))
    # the capacity curve: other label counts, and a weaker base (the policy itself)
    if first and z.capacity:
        extra, after = [], []
        # more labels than Table 1's: label more problems (the first ones again, same seeds)
        if max(z.capacity) > 1:
            stages.append(label("label_more", more_problems(z)))
        # (name, base, labels, steps): a fraction of the labels (steps scaled with it), then the
        # policy as the base
        points = ([(f"{int(f * 100)}%", verifier, str(d / "label" / f"labels.{int(f * 100)}.jsonl"),
                    max(1, int(z.rm_steps * f))) for f in z.capacity]
                  + [("policy", policy, labels, z.rm_steps)])
        for point, base, data_file, steps in points:
            for objective, kind, flag, name in (("prm", "hard", "--prm", f"hard-{point}"),
                                                ("prm_soft", "soft", "--prm", f"soft-{point}"),
                                                ("orm", "hard", "--orm", point)):
                s = train(f"{objective}@{point}", objective[:3], kind, base, data_file, steps)
                s.after = ("label_parts",) if base == verifier else ("label",)
                stages.append(s)
                after.append(s.name)
                extra += [flag, f"{name}={d / s.name}"]
        # the same test solutions as Table 1's, scored by the other recipes
        cap = [a if a != str(d / "verify") else str(d / "capacity") for a in verify]
        stages.append(Stage("capacity",
                            cap + ["--solutions", str(d / "verify" / "solutions.jsonl"), *extra],
                            ("samples", *after)))
    return stages


def more_problems(z: Sizes) -> int:
    return max(1, int(z.label_problems * max(z.capacity)))


def write_label_parts(d: Path, z: Sizes):
    """The capacity curve's label sets: the first fraction of the labeled problems (of label_more's
    for a fraction above 1, whose first label_problems problems are Table 1's, labeled again with
    the same seeds)."""
    def lines_of(folder):
        with open(d / folder / "labels.jsonl", encoding="utf-8") as f:  # not splitlines: U+2028
            lines = list(f)
        return lines, list(dict.fromkeys(json.loads(x)["problem_id"] for x in lines))
    for frac in z.capacity:
        lines, problems = lines_of("label_more" if frac > 1 else "label")
        keep = set(problems[:max(1, int(z.label_problems * frac))])
        atomic_write(d / "label" / f"labels.{int(frac * 100)}.jsonl",
                     "".join(x for x in lines if json.loads(x)["problem_id"] in keep))


class StageFailed(RuntimeError):
    pass


def run(stage: Stage, d: Path, threads: int) -> dict:
    """One stage as a subprocess (output to STAGE.log);
    its wall time and CPU time recorded in STAGE.done."""
    log = d / f"{stage.name}.log"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONUNBUFFERED": "1"}
    t = time.time()
    with open(log, "a") as f:
        f.write(f"\n$ python {' '.join(stage.argv)}\n")
        f.flush()
        p = subprocess.Popen([sys.executable, *stage.argv], cwd=ROOT, stdout=f,
                             stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        said = [x for x in log.read_text(errors="replace").splitlines() if x.startswith("error: ")]
        raise StageFailed(f"stage {d.name}/{stage.name} failed (exit {p.returncode}"
                          f"{': ' + said[-1][7:] if said else ''}); see {log}")
    done = {"wall_s": time.time() - t, "cpu_s": usage.ru_utime + usage.ru_stime,
            "threads": threads, "command": "python " + " ".join(stage.argv)}
    atomic_write(d / f"{stage.name}.done", json.dumps(done) + "\n")
    return done


def run_all(out: Path, seeds: list[int], z: Sizes, policy: str, verifier: str, jobs: int,
            threads: int, bar, completer: str | None = None):
    """Every seed's stages, `jobs` at a time, each as soon as what it needs is done;
    finished ones are skipped."""
    todo = {}
    for k, seed in enumerate(seeds):
        d = out / f"seed{seed}"
        d.mkdir(parents=True, exist_ok=True)
        # first: the scan below runs it, in-process, before the stages that need it
        if k == 0 and z.capacity:
            todo[(d, "label_parts")] = Stage("label_parts", [],
                                             ("label", "label_more") if max(z.capacity) > 1
                                             else ("label",))
        for s in seed_stages(d, seed, z, policy, verifier, first=k == 0, completer=completer):
            todo[(d, s.name)] = s
    done = {key for key in todo if (key[0] / f"{key[1]}.done").exists()}
    bar.reset(total=len(todo))
    bar.update(len(done))
    running = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while len(done) < len(todo):
            for key, s in todo.items():
                ready = all((key[0], a) in done for a in s.after)
                if (key not in done and key not in running.values() and ready
                        and len(running) < jobs):
                    if s.name == "label_parts":  # in-process and instant
                        write_label_parts(key[0], z)
                        atomic_write(key[0] / "label_parts.done", "{}\n")
                        done.add(key)
                        bar.update(1)
                        continue
                    running[pool.submit(run, s, key[0], threads)] = key
            bar.set_postfix_str(", ".join(f"{k[0].name}/{k[1]}" for k in running.values()))
            if not running:
                # a bug in seed_stages
                raise RuntimeError("no stage can run: a dependency is missing")
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in finished:
                key = running.pop(f)
                # a failed stage stops the whole run (the others already running finish first)
                f.result()
                done.add(key)
                bar.update(1)


# ------------------------------------------------------------------------------------------------
# The report


def mean_std(xs: list[float]) -> str:
    xs = [x for x in xs if x == x]  # NaN: not measured
    if not xs:
        return ""
    return (f"{statistics.mean(xs):.3f}"
            + (f" ± {statistics.pstdev(xs):.3f}" if len(xs) > 1 else ""))


def table(head: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(str(x) for x in r) + " |" for r in rows]) + "\n"


def sft_accuracy(out: Path, policy: str, z: Sizes) -> float:
    """Greedy test accuracy of the SFT policy, as ppo.py measures its policies
    (cached: it is seed-free)."""
    cache = out / "sft_eval.json"
    if not cache.exists():
        import torch
        import ppo
        from model import Tokenizer, Transformer
        from train import evaluate_policy
        torch.set_num_threads(1)
        task = data.get_task("synthetic")
        res = evaluate_policy(Transformer.from_pretrained(policy), Tokenizer(policy), task,
                              task.load("test")[:z.test_problems],
                              max_new_tokens=ppo.Config.max_new_tokens)
        atomic_write(cache, json.dumps(res) + "\n")
    return json.loads(cache.read_text())["accuracy"]


def report(out: Path, seeds: list[int], z: Sizes, policy: str, verifier: str,
           argv: list[str], completer: str | None = None) -> str:
    dirs = [out / f"seed{s}" for s in seeds]
    res = [json.loads((d / "verify" / "results.json").read_text()) for d in dirs]
    ns = [n for n in res[0]["curve"] if int(n) in (1, 4, 16, 64) or int(n) == z.samples]
    md = ["# Math-Shepherd in the synthetic world: reproduction report\n\n",
          f"`python bench/reproduce.py {' '.join(argv)}` — seeds {seeds}; "
          f"policy `{Path(policy).name}`, verifier base `{Path(verifier).name}`, labels "
          f"completed by `{Path(completer or policy).name}`. "
          f"Mean ± std over seeds (population std).\n\n",
          f"Sizes: `{json.dumps(asdict(z))}`\n\n",
          table1_md(res, ns, z), table2_md(out, dirs, seeds, policy, z), labels_md(dirs)]
    if z.capacity:
        md.append(capacity_md(dirs[0], res[0], ns[-1], seeds[0], z))
    md.append(times_md(dirs))
    return "".join(md)


def table1_md(res: list[dict], ns: list[str], z: Sizes) -> str:
    main = ["SC", "blind", "PRM-hard-min", "PRM-soft-min", "ORM", "SC+PRM-hard", "SC+PRM-soft",
            "SC+ORM", "LM-base-min"]
    diag = ["within_auc", "pooled_auc", "step_auc", "within_auc_process", "slip_auc"]
    names = ["PRM-hard", "PRM-soft", "ORM", "LM-base"]
    return "".join([
        f"## Table 1: best-of-N on {res[0]['problems']} test problems ({z.samples} samples each)"
        "\n\nAccuracy (mean over random subsets of N). `blind`: what a verifier blind within a "
        "problem gets (a random distinct text); a reward model below it is worse than no "
        "signal. `LM-base-min`: not a reward model but a reference, the verifier base's own "
        "token probabilities (a solution scores the lowest it gives any token): what the "
        "reward models' base knows before reward training.\n\n",
        table(["N", *main],
              [[n, *[mean_std([r["curve"][n][m]["mean"] for r in res if m in r["curve"][n]])
                     for m in main]] for n in ns]),
        "\nVerifier diagnostics (AUC; 0.5 = chance). within: right vs wrong solutions of the "
        "same problem, averaged over problems with both (what reranking needs); pooled: all "
        "solutions (also rewards knowing which problems are hard); step: each step's score "
        "vs its exact truth; process: within, with right = every step true; slip: a "
        "reference step vs the same step with its result off by 1, 2 or 10.\n\n",
        table(["reward model", *diag],
              [[n, *[mean_std([r["diagnostics"][n].get(c, float("nan"))
                               for r in res if n in r["diagnostics"]]) for c in diag]]
               for n in names])])


def table2_md(out: Path, dirs: list[Path], seeds: list[int], policy: str, z: Sizes) -> str:
    sft = sft_accuracy(out, policy, z)
    ppo = {k: [json.loads((d / f"ppo_{k}" / "eval.json").read_text())["test_greedy_accuracy"]
               for d in dirs]
           for k in ("orm", "prm", "truth")}
    row = lambda name, xs: [name, *[f"{x:.3f}" for x in xs], mean_std(xs)]  # noqa: E731
    return (f"\n## Table 2: PPO, greedy accuracy on {z.test_problems} test problems\n\n"
            + table(["policy", *[f"seed {s}" for s in seeds], "mean ± std"],
                    [["SFT (the policy)", *[f"{sft:.3f}"] * len(seeds), f"{sft:.3f}"],
                     row("ORM-PPO", ppo["orm"]),
                     row("step-by-step PPO (PRM-hard)", ppo["prm"]),
                     row("step-by-step PPO, exact step truth as the PRM (oracle)",
                         ppo["truth"])]))


def labels_md(dirs: list[Path]) -> str:
    q = [json.loads((d / "label" / "labels.quality.json").read_text()) for d in dirs]
    return ("\n## Label quality against the exact step truth (the paper's §5.2 analogue)\n\n"
            "Steps with rollouts; hard: any completion right (Eq. 3); "
            "soft: the fraction right (Eq. 4), >= 0.5.\n\n"
            + table(["N", "labels", "accuracy", "FP rate", "FN rate"],
                    [[v["N"], v["labels"],
                      *[mean_std([qq[k][m] for qq in q])
                        for m in ("accuracy", "false_positive_rate", "false_negative_rate")]]
                     for k, v in q[0].items()]))


def capacity_md(d: Path, res: dict, n_max: str, seed: int, z: Sizes) -> str:
    """The first seed's verifier base x label count -> within-problem AUC -> best-of-n_max."""
    cap = json.loads((d / "capacity" / "results.json").read_text())
    rows = []
    points = sorted([(f, f"{int(f * 100)}%", "verifier base") for f in z.capacity]
                    + [(1, "", "verifier base")])
    for f, suffix, base in points + [(1, "policy", "the policy")]:
        r = res if suffix == "" else cap
        for kind in ("PRM-hard", "PRM-soft", "ORM"):
            name = f"{kind}-{suffix}" if suffix else kind
            key = name + "-min" if kind.startswith("PRM") else name
            dg = r["diagnostics"][name]
            rows.append([kind, base, f"{int(f * 100)}%", f"{dg.get('slip_auc', float('nan')):.3f}",
                         f"{dg['within_auc']:.3f}", f"{r['curve'][n_max][key]['mean']:.3f}"])
    return (f"\n## Verifier capacity (seed {seed}): base and label count -> "
            f"within-problem AUC -> best-of-{n_max}\n\n"
            f"blind at N = {n_max}: {res['curve'][n_max]['blind']['mean']:.3f}, "
            f"SC: {res['curve'][n_max]['SC']['mean']:.3f}.\n\n"
            + table(["reward model", "base", "labels", "slip AUC", "within AUC",
                     f"best-of-{n_max}"], rows))


def times_md(dirs: list[Path]) -> str:
    rows = []
    for d in dirs:
        for f in sorted(d.glob("*.done")):
            t = json.loads(f.read_text())
            if "wall_s" in t:
                rows.append([d.name, f.stem, f"{t['wall_s']:.0f}", f"{t['cpu_s']:.0f}",
                             t["threads"]])
    return ("\n## Time per stage (seconds; cpu = user + system of the stage's process)\n\n"
            + table(["seed", "stage", "wall s", "cpu s", "threads"], rows))


def figures(out: Path, seeds: list[int], z: Sizes, policy: str):
    """PNG figures of each table, when matplotlib is installed (an optional extra)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    dirs = [out / f"seed{s}" for s in seeds]
    res = [json.loads((d / "verify" / "results.json").read_text()) for d in dirs]
    ns = [int(n) for n in res[0]["curve"]]
    spread = lambda ys: ([statistics.mean(c) for c in zip(*ys)],  # noqa
                         [statistics.pstdev(c) for c in zip(*ys)])
    pngs = []

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        pngs.append(name)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in ["SC", "blind", "PRM-hard-min", "PRM-soft-min", "ORM", "SC+PRM-hard", "SC+ORM",
              "LM-base-min"]:
        if any(m not in r["curve"][str(ns[0])] for r in res):
            continue  # LM-base: not in runs made before it was added
        mean, std = spread([[r["curve"][str(n)][m]["mean"] for n in ns] for r in res])
        ax.errorbar(ns, mean, yerr=std, marker="o", capsize=2, label=m,
                    ls="--" if m == "blind" else "-")
    ax.set(xlabel="N (solutions per problem)", ylabel="test accuracy", title="Table 1: best-of-N")
    ax.set_xscale("log", base=2)
    ax.legend(fontsize=7)
    save(fig, "table1.png")

    sft = sft_accuracy(out, policy, z)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for i, k in enumerate(("orm", "prm", "truth")):
        ys = [json.loads((d / f"ppo_{k}" / "eval.json").read_text())["test_greedy_accuracy"]
              for d in dirs]
        ax.bar(i + 1, statistics.mean(ys), yerr=statistics.pstdev(ys), capsize=3)
        ax.plot([i + 1] * len(ys), ys, "k.")
    ax.bar(0, sft)
    ax.set_xticks([0, 1, 2, 3], ["SFT", "ORM-PPO", "step-PPO", "oracle step-PPO"])
    ax.set(ylabel="greedy test accuracy", title="Table 2: PPO", ylim=(0, 1))
    save(fig, "table2.png")

    q = [json.loads((d / "label" / "labels.quality.json").read_text()) for d in dirs]
    fig, ax = plt.subplots(figsize=(6, 4))
    for kind in ("hard", "soft"):
        keys = [k for k, v in q[0].items() if v["labels"] == kind]
        for m, ls in (("accuracy", "-"), ("false_positive_rate", "--"),
                      ("false_negative_rate", ":")):
            mean, std = spread([[qq[k][m] for k in keys] for qq in q])
            ax.errorbar([q[0][k]["N"] for k in keys], mean, yerr=std, ls=ls, marker="o", capsize=2,
                        label=f"{kind} {m}")
    ax.set(xlabel="N (completions per step)", ylabel="rate",
           title="label quality vs exact step truth")
    ax.set_xscale("log", base=2)
    ax.legend(fontsize=7)
    save(fig, "labels.png")

    if z.capacity:
        cap = json.loads((dirs[0] / "capacity" / "results.json").read_text())
        n = str(ns[-1])
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in (res[0], cap):
            for name, dg in r["diagnostics"].items():
                key = name + "-min" if name.startswith("PRM") else name
                ax.plot(dg["within_auc"], r["curve"][n][key]["mean"],
                        "o" if name.startswith("PRM") else "s")
                ax.annotate(name, (dg["within_auc"], r["curve"][n][key]["mean"]), fontsize=7)
        for m, ls in (("blind", "--"), ("SC", ":")):
            ax.axhline(res[0]["curve"][n][m]["mean"], ls=ls, color="gray")
            ax.annotate(m, (0.5, res[0]["curve"][n][m]["mean"]), fontsize=7)
        ax.set(xlabel="within-problem AUC", ylabel=f"best-of-{n} accuracy",
               title="verifier capacity")
        save(fig, "capacity.png")
    return pngs


def parse_args(argv=None):
    p = Parser(prog="bench/reproduce.py", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for every stage's output and report.md")
    p.add_argument("--seeds", type=SEED, nargs="+", default=[0, 1, 2])
    p.add_argument("--quick", action="store_true",
                   help="small sizes, the same code path (a few minutes)")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="FIELD=VALUE",
                   help="override sizes (see Sizes); repeats add up")
    p.add_argument("--policy", default=synthetic.POLICY_DIR,
                   help="the policy (generator, default completer, PPO start)")
    p.add_argument("--completer", default=None,
                   help="another model for the labeling rollouts (default: the policy, the recipe; "
                        "README measures the verifier base here)")
    p.add_argument("--verifier", default=synthetic.VERIFIER_DIR,
                   help="the base the reward models are fine-tuned from")
    p.add_argument("--jobs", type=POSITIVE, default=2, help="stages run side by side")
    p.add_argument("--threads", type=POSITIVE, default=1, help="torch threads per stage")
    return p.parse_args(argv)


def sizes_of(args) -> Sizes:
    z = QUICK if args.quick else Sizes()
    types = {f.name: type(f.default) for f in fields(Sizes)}
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in types:
            raise InputError(f"--set {item}: unknown field {key!r}; "
                             f"expected one of {sorted(types)}")
        try:
            val = (tuple(float(x) for x in value.split(",") if x) if types[key] is tuple
                   else types[key](value))
        except ValueError:
            raise InputError(f"--set {item}: expected a {types[key].__name__}") from None
        if not all(math.isfinite(v) and v > 0 for v in (val if isinstance(val, tuple) else [val])):
            what = "finite numbers" if types[key] is tuple else "a finite number"
            raise InputError(f"--set {item}: expected {what} above 0")
        z = replace(z, **{key: val})
    if z.ppo_batch % z.ppo_minibatch:  # ppo.py would refuse it, an hour into the run
        raise InputError(f"--set: ppo_batch {z.ppo_batch} must be a multiple of ppo_minibatch "
                         f"{z.ppo_minibatch}")
    return z


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        z = sizes_of(args)
        # Every checkpoint checked now (no weights read), not when its stage starts an hour in.
        _, tok = load_model(args.policy, "--policy", check_only=True)
        for flag, path, what in (("--verifier", args.verifier, "the verifier base"),
                                 ("--completer", args.completer, "the completer")):
            if path:
                same_tokenizer(tok, load_model(path, flag, check_only=True)[1], what)
        out = Path(args.out).absolute()
        if out.exists() and not out.is_dir():
            raise InputError(f"{args.out}: --out exists and is not a folder")
        above = next(p for p in (out, *out.parents) if p.exists())  # where mkdir starts
        if not above.is_dir() or not os.access(above, os.W_OK):
            raise InputError(f"{args.out}: {above} is " + ("a file" if not above.is_dir() else
                                                            "not writable") + "; expected a folder "
                             "this user can write")
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from tqdm import tqdm
    out = Path(args.out)
    t0 = time.time()
    try:
        with tqdm(desc="reproduce", unit="stage", dynamic_ncols=True) as bar:
            run_all(out, args.seeds, z, args.policy, args.verifier, args.jobs, args.threads, bar,
                    args.completer)
    except StageFailed as e:  # finished stages stay done: the same command resumes after a fix
        print(f"error: {e}", file=sys.stderr)
        return 1
    md = report(out, args.seeds, z, args.policy, args.verifier,
                sys.argv[1:] if argv is None else argv, args.completer)
    pngs = figures(out, args.seeds, z, args.policy)
    if pngs:
        md += "\n" + "".join(f"![{p}]({p})\n" for p in pngs)
    atomic_write(out / "report.md", md)
    print(md)
    print(f"wrote {out / 'report.md'} ({time.time() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
