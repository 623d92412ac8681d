"""Bad input, every command: one line `error: <file>[:line][: field]: <what was expected>`, exit 2, nothing written.

Each case is a command line run in-process, its input files written by the case; the assertion is the same for all:
exit code 2, exactly one stderr line starting with `error: ` and naming the file (and line and field where there are
ones), and no file at all in the case's output folder afterwards. Broken checkpoints are copies of the tiny policy with
one thing wrong. A full disk is RLIMIT_FSIZE on a subprocess (a read-only folder cannot be made for root, who runs CI).
"""
import json
import os
import re
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ppo
import shepherd
import train
from data import formats, synthetic

ROOT = Path(__file__).resolve().parents[1]
POLICY = Path(synthetic.POLICY_DIR)
pytestmark = pytest.mark.skipif(not (POLICY / "config.json").exists(), reason="the tiny policy is not built")

GOOD = {"question": "Tom has 3 apples. He buys 4 more apples. How many apples does Tom have now?",
        "steps": ["3 + 4 = 7", "The answer is: 7"], "gold": "7", "hard": [1, 1], "soft": [1.0, 1.0], "correct": True}


def rec(**change):
    r = {**GOOD, **change}
    return json.dumps({k: v for k, v in r.items() if v is not ...})


def broken(w: Path, name: str, how) -> str:
    """A copy of the tiny policy, changed by how(folder)."""
    folder = w / "ck" / name
    if not folder.exists():
        shutil.copytree(POLICY, folder)
        how(folder)
    return str(folder)


def edit_json(name, change):
    def how(folder):
        d = json.loads((folder / name).read_text())
        change(d)
        (folder / name).write_text(json.dumps(d))
    return how


def truncate(folder):
    p = folder / "model.safetensors"
    p.write_bytes(p.read_bytes()[:len(p.read_bytes()) // 2])


def to_shards(folder):
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors"}}))


def to_pickle(folder):
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")


def more_tokens(folder):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.add_tokens([f"extra{i}" for i in range(40)])
    tok.save(str(folder / "tokenizer.json"))


def swap_tokens(folder):  # the same size, two tokens exchanged: another model's tokenizer
    d = json.loads((folder / "tokenizer.json").read_text())
    v = d["model"]["vocab"]
    v["apples"], v["pencils"] = v["pencils"], v["apples"]
    (folder / "tokenizer.json").write_text(json.dumps(d))


def nan_weights(folder):
    from safetensors.torch import load_file, save_file
    t = load_file(str(folder / "model.safetensors"))
    t["model.norm.weight"][:] = float("nan")
    save_file(t, str(folder / "model.safetensors"), metadata={"format": "pt"})


# (id, input file text or None, argv with {in} {out} {dir} and {ck:NAME}, what the error line must contain)
LABEL = ["label", "--solutions", "{in}", "--out", "{out}/labels.jsonl"]
TRAIN = ["train", "--objective", "prm", "--data", "{in}", "--out", "{out}/prm", "--steps", "1"]
CASES = [
    # label --solutions: each field's wrong JSON type, missing tags, unreadable gold, an empty file
    ("malformed-json", rec() + "\n{\"question\": ", LABEL, "{in}:2: malformed JSON"),
    ("not-an-object", "[1, 2]\n", LABEL, "{in}:1: expected a JSON object, got list"),
    ("empty-file", "", LABEL, "{in}: no records (the file is empty)"),
    ("blank-lines", "\n\n", LABEL, "{in}: no records"),
    ("unknown-fields", '{"foo": 1}\n', LABEL, "{in}:1: expected fields input [+ label]"),
    ("question-number", rec(question=3), LABEL, "{in}:1: field 'question': expected a string, got int"),
    ("steps-string", rec(steps="3 + 4 = 7"), LABEL, "{in}:1: field 'steps': expected a list of step strings, got str"),
    ("steps-numbers", rec(steps=[7, 8]), LABEL, "{in}:1: field 'steps': expected a list of step strings"),
    ("steps-empty", rec(steps=[]), LABEL, "{in}:1: field 'steps': the solution has no steps"),
    ("steps-blank", rec(steps=["  "]), LABEL, "{in}:1: field 'steps': the solution has no steps"),
    ("gold-list", rec(gold=["7"]), LABEL, "{in}:1: field 'gold': expected the final answer as a string or number, got list"),
    ("gold-bool", rec(gold=True), LABEL, "{in}:1: field 'gold': expected the final answer as a string or number, got bool"),
    ("gold-unreadable", rec(gold="seven"), LABEL, "{in}:1: field 'gold': 'seven' is not an answer the data.synthetic grader can read"),
    ("gold-missing", rec(question="What is 1 + 1?", gold=...), LABEL, "{in}:1: field 'gold': no gold answer"),
    ("ms-no-tag", '{"input": "Q Step 1: 1 + 1 = 2", "gold": "2"}\n', LABEL, "{in}:1: field 'input': no step tag 'ки'"),
    ("ms-input-list", '{"input": ["Q"], "gold": "2"}\n', LABEL, "{in}:1: field 'input': expected a string, got list"),
    ("stepwise-no-completions", '{"prompt": "Q", "gold": "2"}\n', LABEL, "{in}:1: field 'completions': expected a list of step strings, got nothing"),
    ("stepwise-completions-string", '{"prompt": "Q", "completions": "1 + 1 = 2", "gold": "2"}\n', LABEL,
     "{in}:1: field 'completions': expected a list of step strings, got str"),
    ("stepwise-prompt-missing", '{"completions": ["1 + 1 = 2"], "gold": "2"}\n', LABEL, "{in}:1: field 'prompt': expected a string, got nothing"),
    ("too-long", rec(question="Tom has 3 apples. " * 80), LABEL, "{in}:1: fields 'question' + steps: 498 tokens do not fit"),
    ("out-is-input", rec(), ["label", "--solutions", "{in}", "--out", "{in}"], "--out is the --solutions input"),
    ("out-under-a-file", rec(), ["label", "--solutions", "{in}", "--out", "{in}/labels.jsonl"],
     "error: {in}: exists and is not a folder; expected one (or a new path)"),
    ("steps-hold-tag", rec(steps=["3 + 4 = 7 ки 7 - 0 = 7", "The answer is: 7"]), LABEL,
     "{in}:1: field 'steps': 2 steps but 3 step tags 'ки' once tokenised"),
    ("tag-in-text", rec(), LABEL + ["--tag", "+"], "{in}:1: field 'steps': 2 steps but 3 step tags '+'"),
    ("nested-too-deep", '{"x": ' + "[" * 100_000 + "]" * 100_000 + "}", LABEL, "{in}:1: malformed JSON (nested too deeply)"),
    ("integer-too-long", rec(gold=...)[:-1] + ', "gold": ' + "9" * 5000 + "}", LABEL, "{in}:1: malformed JSON (Exceeds the limit"),
    ("lone-surrogate", rec(question="Tom has 3 apples.\ud800"), LABEL, "{in}:1: a string holds an unpaired surrogate"),
    ("id-twice", rec(id="x") + "\n" + rec(id="x", question="Ann has 5 pens. How many pens does Ann have now?",
                                          steps=["The answer is: 5"], gold="5", hard=..., soft=...), LABEL, "{in}:2: field 'id': 'x' is also line 1's"),
    ("id-list", rec(id=["a"]), LABEL, "{in}:1: field 'id': expected a string or an integer, got list"),
    ("answer-list", rec(gold=..., answer=["7"]), LABEL, "{in}:1: field 'answer': expected the final answer"),
    # train --data: labels out of range or of the wrong type or count, Math-Shepherd labels that do not match
    ("labels-above-one", rec(hard=[1, 2]), TRAIN, "{in}:1: field 'hard': expected a list of labels in [0, 1]"),
    ("labels-negative", rec(hard=[1, -1]), TRAIN, "{in}:1: field 'hard': expected a list of labels in [0, 1]"),
    ("labels-strings", '{"prompt": "Q", "completions": ["1 + 1 = 2"], "labels": ["yes"]}\n', TRAIN,
     "{in}:1: field 'labels': expected a list of labels in [0, 1]"),
    ("labels-nan", '{"prompt": "Q", "completions": ["1 + 1 = 2"], "labels": [NaN]}\n', TRAIN,
     "{in}:1: field 'labels': expected a list of labels in [0, 1]"),
    ("labels-count", '{"prompt": "Q", "completions": ["1 + 1 = 2", "The answer is: 2"], "labels": [true]}\n', TRAIN,
     "{in}:1: field 'labels': 1 labels for 2 steps"),
    ("labels-missing", rec(hard=...), TRAIN, "{in}:1: no step labels"),
    ("correct-string", rec(correct="yes"), TRAIN, "{in}:1: field 'correct': expected true or false"),
    ("ms-label-mismatch", '{"input": "Q Step 1: 1 + 1 = 2 ки", "label": "Q Step 1: 1 + 1 = 3 +"}\n', TRAIN,
     "{in}:1: field 'label' is not field 'input' with step 1's tag replaced by + or -"),
    ("ms-label-longer", '{"input": "Q Step 1: 1 + 1 = 2 ки", "label": "Q Step 1: 1 + 1 = 2 + ки -"}\n', TRAIN,
     "{in}:1: field 'label' is not field 'input' with each tag replaced by + or -: they differ after the last tag"),
    ("train-empty", "", TRAIN, "{in}: no records"),
    ("train-batch-split", rec(), TRAIN + ["--batch-size", "5", "--grad-accum", "2"],
     "--batch-size 5 must be a multiple of world size x --grad-accum"),
    ("sft-response-number", '{"prompt": "Q", "response": 7}\n', ["train", "--data", "{in}", "--out", "{out}/sft"],
     "{in}:1: field 'response': expected a string, got int"),
    ("train-out-is-a-checkpoint", rec(), TRAIN[:-4] + ["--out", "{ck:foreign}", "--steps", "1"],
     "--out exists and is not a train output"),
    # checkpoints: each way a folder can be broken, a tokenizer from another model
    ("model-missing", None, ["train", "--model", "{dir}/nowhere", "--out", "{out}/m"], "--model: {dir}/nowhere: not a checkpoint folder"),
    ("no-config", None, ["train", "--model", "{ck:no-config}", "--out", "{out}/m"], "{ck:no-config}: no config.json"),
    ("no-tokenizer", None, ["train", "--model", "{ck:no-tokenizer}", "--out", "{out}/m"], "{ck:no-tokenizer}: no tokenizer.json"),
    ("config-not-json", None, ["train", "--model", "{ck:config-not-json}", "--out", "{out}/m"], "config.json, line 1: not valid JSON"),
    ("config-field", None, ["train", "--model", "{ck:config-field}", "--out", "{out}/m"], "missing required field 'hidden_size'"),
    ("truncated-shard", None, ["train", "--model", "{ck:truncated}", "--out", "{out}/m"], "{ck:truncated}: unreadable safetensors weights"),
    ("missing-shard", None, ["train", "--model", "{ck:shards}", "--out", "{out}/m"], "names shard(s) ['model-00001-of-00002.safetensors']"),
    ("wrong-shape", None, ["train", "--model", "{ck:shape}", "--out", "{out}/m"], "the model expects"),
    ("pickle-only", None, ["train", "--model", "{ck:pickle}", "--out", "{out}/m"], "only pickled weights (pytorch_model.bin)"),
    ("vocab-too-big", None, ["label", "--model", "{ck:more-tokens}", "--out", "{out}/l.jsonl"],
     "{ck:more-tokens}/tokenizer.json: 242 tokens do not fit the model's embedding (202 rows)"),
    ("completer-tokenizer", None, ["label", "--completer", "{ck:swapped}", "--out", "{out}/l.jsonl"],
     "{ck:swapped}: the completer's tokenizer differs"),
    ("verify-prm-missing", None, ["verify", "--prm", "{dir}/nowhere", "--out", "{out}/v"], "--prm PRM: {dir}/nowhere: not a checkpoint"),
    ("verify-lm-missing", None, ["verify", "--lm", "base={dir}/nowhere", "--out", "{out}/v"],
     "--lm LM-base: {dir}/nowhere: not a checkpoint"),
    ("verify-lm-nan-weights", '{"problem_id": "syn-test-000000", "steps": ["1 + 1 = 2"]}\n',
     ["verify", "--lm", "{ck:nan}", "--limit", "2", "--num-samples", "2", "--solutions", "{in}", "--out", "{out}/v"],
     "{ck:nan}: the reward model's scores are not finite"),
    ("verify-nan-weights", None, ["verify", "--orm", "{ck:nan}", "--limit", "2", "--num-samples", "2",
                                  "--solutions", "{in}", "--out", "{out}/v"], "{ck:nan}: the reward model's scores are not finite"),
    ("verify-name-twice", None, ["verify", "--prm", "a=" + str(POLICY), "--prm", "a={ck:plain}", "--limit", "2", "--num-samples", "2",
                           "--out", "{out}/v"],
     "--prm PRM-a: the name PRM-a is given twice"),
    ("verify-solutions-steps", '{"problem_id": "syn-test-000000", "steps": "1 + 1 = 2"}\n',
     ["verify", "--solutions", "{in}", "--out", "{out}/v"], "{in}:1: field 'steps': expected a list of step strings"),
    ("verify-solutions-unknown", '{"problem_id": "nope", "steps": ["1 + 1 = 2"]}\n',
     ["verify", "--solutions", "{in}", "--out", "{out}/v"], "{in}: no record's problem_id or question"),
    ("unknown-split", None, ["label", "--split", "dev", "--out", "{out}/l.jsonl"], "--split dev: task 'synthetic' has splits train, val, test"),
    ("train-data-folder", None, ["train", "--objective", "prm", "--data", "{dir}", "--out", "{out}/t"],
     "{dir}: Is a directory; expected a JSONL file"),
    ("train-heldout-all", None, ["train", "--heldout", "1.0", "--num-examples", "64", "--steps", "2", "--out", "{out}/t"],
     "--heldout 1.0: leaves none of the 64 examples to train on"),
    ("train-lm-coef-sft", None, ["train", "--lm-coef", "1", "--num-examples", "64", "--steps", "2", "--out", "{out}/t"],
     "--lm-coef 1.0: only for --objective prm or orm"),
    # ppo.py: the same contract
    ("ppo-policy-missing", None, ["ppo", "--policy", "{dir}/nowhere", "--out", "{out}/p"], "--policy: {dir}/nowhere: not a checkpoint"),
    ("ppo-reward-model-no-tokenizer", None, ["ppo", "--reward-model", "{ck:no-tokenizer}", "--out", "{out}/p"],
     "{ck:no-tokenizer}: no tokenizer.json"),
    ("ppo-out-foreign", "my notes\n", ["ppo", "--out", "{dir}/ppo-out-foreign"], "{dir}/ppo-out-foreign: --out exists and is not a ppo.py output"),
    ("ppo-reward-model-tokenizer", None, ["ppo", "--reward-model", "{ck:swapped}", "--iterations", "1", "--out", "{out}/p"],
     "{ck:swapped}: the reward model's tokenizer differs"),
]
CHECKPOINTS = {
    "plain": lambda f: None,
    "foreign": lambda f: (f / "trainer_state.json").unlink(),  # a checkpoint that train did not make
    "no-config": lambda f: (f / "config.json").unlink(),
    "no-tokenizer": lambda f: (f / "tokenizer.json").unlink(),
    "config-not-json": lambda f: (f / "config.json").write_text("{"),
    "config-field": edit_json("config.json", lambda d: d.pop("hidden_size")),
    "truncated": truncate,
    "shards": to_shards,
    "shape": edit_json("config.json", lambda d: d.update(intermediate_size=d["intermediate_size"] * 2)),
    "pickle": to_pickle,
    "more-tokens": more_tokens,
    "swapped": swap_tokens,
    "nan": nan_weights,
}


BAR = re.compile(r"\d+%\|.*\]$")  # a progress bar drawn before the error (scoring had started): not a message


def fill(s: str, w: Path, case_dir: Path) -> str:
    s = s.replace("{in}", str(case_dir / "in.jsonl")).replace("{out}", str(case_dir / "out")).replace("{dir}", str(w))
    for name, how in CHECKPOINTS.items():
        if "{ck:" + name + "}" in s:
            s = s.replace("{ck:" + name + "}", broken(w, name, how))
    return s


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tmp_path_factory.mktemp("bad")


def files_under(p: Path) -> list[str]:
    return sorted(str(f) for f in p.rglob("*") if f.is_file()) if p.exists() else []


@pytest.mark.parametrize("name,text,argv,want", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_nothing_written(world, capsys, name, text, argv, want):
    case_dir = world / name
    case_dir.mkdir()
    if text is not None:
        (case_dir / "in.jsonl").write_text(text if not text or text.endswith("\n") else text + "\n")
    if name == "verify-nan-weights":
        (case_dir / "in.jsonl").write_text(json.dumps({"problem_id": "syn-test-000000", "steps": ["1 + 1 = 2"]}) + "\n")
    argv = [fill(a, world, case_dir) for a in argv]
    before = {f: Path(f).stat().st_mtime_ns for f in files_under(world / "ck")}
    capsys.readouterr()
    rc = ppo.main(argv[1:]) if argv[0] == "ppo" else shepherd.main(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and not BAR.search(line)]
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert fill(want, world, case_dir) in err[0], err
    assert files_under(case_dir / "out") == [], "something was written"
    if text is not None:
        assert [Path(f).name for f in files_under(case_dir)] == ["in.jsonl"]
    assert {f: Path(f).stat().st_mtime_ns for f in files_under(world / "ck")} == before  # inputs are never touched


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("argv", [["label"], ["train"], ["verify"], ["ppo"]])
def test_a_cuda_device_on_a_cpu_build_is_a_usage_error(tmp_path, capsys, argv):
    run = ppo.parse_args if argv[0] == "ppo" else shepherd.build_parser().parse_args
    with pytest.raises(SystemExit) as e:
        run((argv[1:] if argv[0] == "ppo" else argv) + ["--device", "cuda", "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and "this torch build has no CUDA device" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("flag,value,want", [("--lr", "nan", "expected > 0, not nan"), ("--gamma", "2", "expected >= 0 and <= 1"),
                                             ("--iterations", "0", "expected >= 1, not 0"),
                                             ("--kl-coef", "-1", "expected >= 0, not -1"),
                                             ("--no-answer-penalty", "nan", "expected a finite number, not nan"),
                                             ("--dtype", "fp8", "--dtype is auto, float32 or bfloat16")])
def test_ppo_argument_ranges(capsys, flag, value, want):
    with pytest.raises(SystemExit) as e:
        ppo.parse_args([flag, value])
    assert e.value.code == 2 and want in capsys.readouterr().err


@pytest.mark.parametrize("main,argv,want", [
    (shepherd.main, ["label", "--limit", "0"], "error: argument --limit: expected >= 1, not 0 (see shepherd.py label --help)"),
    (shepherd.main, ["train", "--seed", "-1"], "error: argument --seed: expected >= 0 and <= 4294967295, not -1"),
    (shepherd.main, ["nope"], "error: argument command: invalid choice: 'nope'"),
    (ppo.main, ["--seed", "1" + "0" * 23], "error: argument --seed: expected >= 0"),
    (ppo.main, ["--dtype", "fp8"], "error: --dtype is auto, float32 or bfloat16, not 'fp8' (see ppo.py --help)")])
def test_a_usage_error_is_one_line(capsys, main, argv, want):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.splitlines() == [err.strip()] and err.startswith(want), err


def test_label_never_overwrites_its_input_with_an_export(tmp_path, capsys):
    src = tmp_path / "mine.math-shepherd.jsonl"
    src.write_text(rec() + "\n")
    rc = shepherd.main(["label", "--solutions", str(src), "--format", "math-shepherd", "--out", str(tmp_path / "mine.jsonl")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == f"error: {src}: an export of --out would overwrite the --solutions input; choose another --out"
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name] and src.read_text() == rec() + "\n"


def limited(nbytes):
    def set_limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))  # writes past it fail with EFBIG
    return set_limit


@pytest.mark.parametrize("nbytes", [300, 800])  # the sidecar's first line fails; the first unit's records fail
def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, nbytes):
    out = tmp_path / "out" / "labels.jsonl"
    r = subprocess.run([sys.executable, str(ROOT / "shepherd.py"), "label", "--limit", "2", "--num-solutions", "2",
                        "--num-completions", "2", "--max-new-tokens", "64", "--group", "1", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300, preexec_fn=limited(nbytes))
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and last.startswith("error: ") and "cannot write (File too large)" in last, r.stderr
    assert not (tmp_path / "out").exists()


def test_a_full_disk_in_train_leaves_no_checkpoint_and_no_log(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "shepherd.py"), "train", "--steps", "2", "--num-examples", "50",
                        "--eval-problems", "0", "--out", str(tmp_path / "m")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300, preexec_fn=limited(100_000))
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and last.startswith(f"error: {tmp_path / 'm'}: cannot write the checkpoint"), r.stderr
    assert files_under(tmp_path) == []


def label_argv(out, *extra):
    return ["label", "--limit", "2", "--num-solutions", "2", "--num-completions", "2", "--max-new-tokens", "64",
            "--group", "1", "--out", str(out), *extra]


def test_label_resume_refuses_other_settings_and_a_second_writer(tmp_path, capsys):
    out = tmp_path / "labels.jsonl"
    assert shepherd.main(label_argv(out)) == 0
    first = out.read_bytes()
    for extra, changed in ((["--num-completions", "3"], "num_completions: 2 -> 3"), (["--seed", "1"], "seed: 0 -> 1"),
                           (["--completer", str(broken(tmp_path, "plain", lambda f: None))], "completer: None -> ")):
        capsys.readouterr()
        assert shepherd.main(label_argv(out, *extra)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "made with other settings" in err[0] and changed in err[0] and "--restart" in err[0], err
        assert out.read_bytes() == first
    assert shepherd.main(label_argv(out)) == 0 and out.read_bytes() == first  # the same settings: all done already
    import fcntl
    with open(tmp_path / ".labels.jsonl.progress") as held:  # another process is writing it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        capsys.readouterr()
        assert shepherd.main(label_argv(out)) == 2
        assert "another process is writing this output" in capsys.readouterr().err
    assert shepherd.main(label_argv(out, "--seed", "1", "--restart")) == 0 and out.read_bytes() != first


def test_label_never_overwrites_a_foreign_file(tmp_path, capsys):
    out = tmp_path / "notes.jsonl"
    out.write_text("my notes\n")
    for extra in ([], ["--restart"]):
        assert shepherd.main(label_argv(out, *extra)) == 2
        assert "--out exists and is not a label output" in capsys.readouterr().err
        assert out.read_text() == "my notes\n" and sorted(os.listdir(tmp_path)) == ["notes.jsonl"]


def test_train_resume_refuses_other_settings_and_a_second_writer(tmp_path, capsys, monkeypatch):
    out = tmp_path / "sft"
    args = ["train", "--num-examples", "64", "--batch-size", "8", "--steps", "4", "--eval-every", "2",
            "--eval-problems", "0", "--save-every", "2", "--out", str(out)]
    real_save = shepherd.Transformer.save_pretrained

    def save_then_die(self, path, *a, **kw):  # the checkpoint at step 2 lands, then the run "crashes"
        real_save(self, path, *a, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(shepherd.Transformer, "save_pretrained", save_then_die)
    assert shepherd.main(args) == 130
    monkeypatch.setattr(shepherd.Transformer, "save_pretrained", real_save)
    log = tmp_path / "sft.log.jsonl"
    saved = log.read_text()
    capsys.readouterr()
    assert shepherd.main(args + ["--lr", "5e-4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "made with other settings (--lr 0.001 -> 0.0005)" in err[0] and "--restart" in err[0], err
    assert log.read_text() == saved  # untouched by the refusal
    import fcntl
    with open(log) as held:  # another process is training into the same --out
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert shepherd.main(args) == 2
        assert "another process is writing this run" in capsys.readouterr().err
    assert log.read_text() == saved
    assert shepherd.main(args) == 0  # the same settings resume: the log keeps steps <= 2, then 3 and 4
    assert [r["step"] for r in map(json.loads, log.read_text().splitlines())] == [0, 1, 2, 3, 4]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_one_line(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert shepherd.main(label_argv(ro / "labels.jsonl")) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(f"error: {ro}") and "Permission denied" in err[-1], err
        assert not any(ro.iterdir())
    finally:
        ro.chmod(0o755)


def test_a_hub_id_the_hub_cannot_provide_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "shepherd.py"), "train", "--model", "nobody-here/no-such-model",
                        "--out", str(tmp_path / "m")], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1, r.stderr
    assert err[0].startswith("error: --model: nobody-here/no-such-model: config.json is not in the local hub cache, "
                             "and the hub cannot be reached (HF_HUB_OFFLINE=1"), err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("missing, want", [
    ("model-00002-of-00002.safetensors", "shard model-00002-of-00002.safetensors is not in the local hub cache"),
    ("model.safetensors.index.json", "model.safetensors (or model.safetensors.index.json) is not in the local hub"),
])
def test_offline_with_a_file_missing_from_the_hub_cache_names_it(tmp_path, missing, want):
    """A hub cache (laid out as huggingface_hub keeps it) that lacks one file, offline: the error names the repo, the
    file and offline mode, not 'no safetensors weights on the hub'."""
    snap = tmp_path / "hub" / "models--org--tiny" / "snapshots" / ("0" * 40)
    shutil.copytree(POLICY, snap)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("0" * 40)
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    (snap / "model.safetensors").rename(snap / names[0])
    (snap / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": names[0], "b": names[1]}}))
    if missing != names[1]:
        (snap / missing).unlink()
    r = subprocess.run([sys.executable, str(ROOT / "shepherd.py"), "train", "--model", "org/tiny", "--out",
                        str(tmp_path / "m")], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")})
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1, r.stderr
    assert err[0].startswith(f"error: --model: org/tiny: {want}") and "HF_HUB_OFFLINE=1" in err[0], err
    assert not (tmp_path / "m").exists()
    shutil.copy(snap / names[0], snap / names[1])  # the whole checkpoint cached: offline, it resolves to the snapshot
    if missing == "model.safetensors.index.json":
        (snap / missing).write_text(json.dumps({"weight_map": {"a": names[0], "b": names[1]}}))
    r = subprocess.run([sys.executable, "-c", "import model; print(model.resolve_checkpoint('org/tiny'))"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")})
    assert r.returncode == 0 and Path(r.stdout.strip()) == snap, r.stderr


def test_a_nan_loss_at_step_0_names_no_checkpoint_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    real = train.objective_loss

    def nan_loss(*a, **kw):
        loss, p, t = real(*a, **kw)
        return loss * float("nan"), p, t

    monkeypatch.setattr(train, "objective_loss", nan_loss)
    assert shepherd.main(["train", "--num-examples", "32", "--batch-size", "8", "--steps", "3", "--heldout", "0",
                          "--eval-problems", "0", "--out", str(tmp_path / "m")]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not BAR.search(line)]
    assert len(err) == 1 and "loss is nan at step 0" in err[0] and "no checkpoint was saved" in err[0], err
    assert files_under(tmp_path) == []


def test_bad_data_for_a_scratch_model_leaves_no_scratch_tokenizer(tmp_path, capsys, monkeypatch):
    """A model trained from scratch builds its tokenizer in a temp folder first: a bad --data removes it too."""
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    (tmp_path / "in.jsonl").write_text(rec(steps=[]) + "\n")
    assert shepherd.main(["train", "--data", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "m")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'in.jsonl'}:1")
    assert files_under(tmp_path / "tmp") == [] and not list((tmp_path / "tmp").iterdir())
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("state", ["garbage", "foreign"])
@pytest.mark.parametrize("command", ["train", "ppo"])
def test_a_broken_trainer_state_is_one_line_and_touches_nothing(tmp_path, capsys, command, state):
    out = tmp_path / "run"
    folder = out / "checkpoint" if command == "ppo" else out
    shutil.copytree(POLICY, folder)  # train resumes its --out; ppo.py its --out/checkpoint
    (folder / "trainer_state.json").unlink(missing_ok=True)
    path = folder / "trainer_state.pt"
    if state == "garbage":  # a truncated copy, or not torch's format at all
        path.write_text("not a torch file\n")
    else:  # torch's format, but not what resuming reads
        torch.save({"step": 3}, path)
    before = {f: Path(f).stat().st_mtime_ns for f in files_under(tmp_path)}
    argv = (["--reward", "truth", "--critic-init", "policy", "--iterations", "1", "--out", str(out)]
            if command == "ppo" else ["train", "--steps", "4", "--out", str(out)])
    rc = ppo.main(argv) if command == "ppo" else shepherd.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: {path}: not a trainer state this tool wrote") and "--restart" in err[0], err
    assert {f: Path(f).stat().st_mtime_ns for f in files_under(tmp_path)} == before


def test_a_byte_order_mark_is_not_a_mistake(tmp_path):
    """Editors on Windows start UTF-8 files with one: read past it, as text without it."""
    plain, bom = tmp_path / "plain.jsonl", tmp_path / "bom.jsonl"
    plain.write_text(rec() + "\n")
    bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    rows = formats.read_input(bom)
    assert rows == formats.read_input(plain) and rows[0][1]["gold"] == "7"
    latin = tmp_path / "latin.jsonl"  # a byte that is not UTF-8 names its line, past the first
    latin.write_bytes(plain.read_bytes() + rec(question="Zoe has 3 apples.").replace("Zoe", "Zo\xeb").encode("latin-1") + b"\n")
    with pytest.raises(formats.InputError, match=f"^{re.escape(str(latin))}:2: not UTF-8 text$"):
        formats.read_input(latin)
