"""bench/reproduce.py end to end on a tiny configuration: every stage runs, the report has every table, and a rerun
recomputes nothing."""
import json
import shutil
import sys
from pathlib import Path

import pytest

from data import synthetic
from test_bad_input import swap_tokens

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import reproduce  # noqa: E402

TINY = ["label_problems=3", "solutions=2", "completions=2", "rm_steps=2", "rm_batch=4", "verify_problems=3",
        "samples=4", "subsets=2", "ppo_iterations=1", "ppo_batch=4", "ppo_minibatch=4", "eval_problems=4",
        "test_problems=4", "capacity=2"]


@pytest.mark.skipif(not (Path(synthetic.POLICY_DIR) / "config.json").exists(), reason="the tiny policy is not built")
def test_tiny_reproduction_writes_every_table_and_resumes(tmp_path, monkeypatch):
    out = tmp_path / "rep"
    # the policy doubles as the verifier base here: any checkpoint of the world will do for the plumbing
    argv = ["--out", str(out), "--seeds", "0", "--set", *TINY, "--verifier", synthetic.POLICY_DIR]
    assert reproduce.main(argv) == 0
    md = (out / "report.md").read_text()
    for heading in ("## Table 1: best-of-N", "Verifier diagnostics", "## Table 2: PPO", "## Label quality",
                    "## Verifier capacity", "## Time per stage"):
        assert heading in md, heading
    for row in ("| 4 |", "| SFT (the policy) |", "| ORM-PPO |", "| step-by-step PPO (PRM-hard) |",
                "| step-by-step PPO, exact step truth as the PRM (oracle) |", "| PRM-hard |",
                "| PRM-hard | verifier base | 200% |", "| PRM-soft | verifier base | 200% |",
                "| ORM | the policy | 100% |", "| LM-base |"):
        assert row in md, row
    # the LM-base reference is measured, not an empty column
    res = json.loads((out / "seed0" / "verify" / "results.json").read_text())
    assert 0 <= res["curve"]["4"]["LM-base-min"]["mean"] <= 1 and "LM-base-min" in md.split("\n| 1 |")[0]
    # 9 stages per seed, and the capacity curve's 9: label_more (twice the problems), label_parts, PRM-hard, PRM-soft
    # and ORM on twice the labels and on the policy, their verify
    assert len(list((out / "seed0").glob("*.done"))) == 18
    # label_more labels Table 1's problems again, with the same seeds: the same records, then more
    rows = lambda f: [json.loads(x) for x in f.read_text().splitlines()]  # noqa: E731
    table1, more = rows(out / "seed0" / "label" / "labels.jsonl"), rows(out / "seed0" / "label_more" / "labels.jsonl")
    assert len({r["problem_id"] for r in more}) == 6 and more[:len(table1)] == table1
    done = {p: p.read_text() for p in out.glob("seed*/*.done")}
    assert all(json.loads(t).get("wall_s", 0) >= 0 for t in done.values())
    # a rerun: no stage runs again, and the report is the same
    monkeypatch.setattr(reproduce, "run", lambda *a: pytest.fail(f"stage {a[0].name} ran again"))
    assert reproduce.main(argv) == 0
    assert {p: p.read_text() for p in out.glob("seed*/*.done")} == done
    assert (out / "report.md").read_text() == md
    # a removed marker reruns that stage only
    (out / "seed0" / "verify.done").unlink()
    ran = []
    monkeypatch.setattr(reproduce, "run", lambda stage, d, threads: ran.append((d.name, stage.name)) or {})
    assert reproduce.main(argv) == 0
    assert ran == [("seed0", "verify")]


def test_set_overrides_add_up_across_repeats():
    z = reproduce.sizes_of(reproduce.parse_args(["--out", "x", "--set", "rm_steps=7", "--set", "capacity=0.5,2"]))
    assert (z.rm_steps, z.capacity, z.label_problems) == (7, (0.5, 2.0), reproduce.Sizes().label_problems)


def test_bad_sizes_are_refused(tmp_path, capsys):
    assert reproduce.main(["--out", str(tmp_path), "--set", "label_problem=3"]) == 2
    assert "unknown field 'label_problem'" in capsys.readouterr().err
    assert reproduce.main(["--out", str(tmp_path), "--set", "rm_steps=many"]) == 2
    assert "expected a int" in capsys.readouterr().err
    for bad, want in (("solutions=0", "expected a finite number above 0"), ("capacity=0.5,-1", "expected finite numbers above 0"),
                      ("rm_lr=inf", "expected a finite number above 0"), ("capacity=inf", "expected finite numbers above 0"),
                      ("ppo_batch=48", "ppo_batch 48 must be a multiple of ppo_minibatch 32")):
        assert reproduce.main(["--out", str(tmp_path), "--set", bad]) == 2
        assert want in capsys.readouterr().err, bad
    assert not any(tmp_path.iterdir())
    (tmp_path / "a-file").write_text("notes\n")
    assert reproduce.main(["--out", str(tmp_path / "a-file" / "r")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'a-file' / 'r'}: {tmp_path / 'a-file'} is a file; expected a folder this user can write\n"
    assert [p.name for p in tmp_path.iterdir()] == ["a-file"]


def test_completer_reaches_every_label_stage_and_only_them(tmp_path, capsys):
    z = reproduce.Sizes(capacity=(0.5, 2.0))
    argvs = lambda c: {s.name: s.argv for s in reproduce.seed_stages(tmp_path, 0, z, "P", "V", True, c)}  # noqa: E731
    plain, strong = argvs(None), argvs("C")
    assert not any("--completer" in a for a in plain.values())
    changed = {n for n in plain if plain[n] != strong[n]}
    assert changed == {"label", "label_more"}
    for n in changed:
        a = strong[n]
        assert a[a.index("--completer") + 1] == "C" and a[a.index("--model") + 1] == "P"
    assert reproduce.main(["--out", str(tmp_path / "r"), "--completer", str(tmp_path / "none")]) == 2
    assert "--completer: " + str(tmp_path / "none") + ": not a checkpoint folder" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(not (Path(synthetic.POLICY_DIR) / "config.json").exists(), reason="the tiny policy is not built")
@pytest.mark.parametrize("flag,what", [("--completer", "the completer"), ("--verifier", "the verifier base")])
def test_a_model_with_another_tokenizer_is_refused_before_the_run(tmp_path, capsys, monkeypatch, flag, what):
    """Refused up front (exit 2, nothing written), not when its stage starts an hour into the run."""
    monkeypatch.setattr(reproduce, "run_all", lambda *a: pytest.fail("the run started"))
    other = tmp_path / "other"
    shutil.copytree(synthetic.POLICY_DIR, other)
    swap_tokens(other)
    assert reproduce.main(["--out", str(tmp_path / "r"), flag, str(other)]) == 2
    assert f"error: {other}: {what}'s tokenizer differs" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_failed_stage_is_one_line_naming_its_error_and_log(tmp_path, capsys, monkeypatch):
    foreign = tmp_path / "notes.jsonl"
    foreign.write_text("my notes\n")  # label refuses to overwrite it: the stage exits 2
    monkeypatch.setattr(reproduce, "seed_stages", lambda d, *a, **k: [
        reproduce.Stage("label", ["shepherd.py", "label", "--limit", "1", "--out", str(foreign)])])
    assert reproduce.main(["--out", str(tmp_path / "r"), "--seeds", "0", "--set", "capacity="]) == 1
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error: ")]
    log = tmp_path / "r" / "seed0" / "label.log"
    assert err == [f"error: stage seed0/label failed (exit 2: {foreign}: --out exists and is not a label output; "
                   f"remove it or choose another --out); see {log}"], err
    assert not (tmp_path / "r" / "seed0" / "label.done").exists() and foreign.read_text() == "my notes\n"
