"""A real, small Llama-architecture checkpoint end to end (slow: `python -m pytest -q tests --slow`): SmolLM2-135M-
Instruct from its published GGUF (tests/gguf_fixture.py), whose byte-level BPE tokenizer writes ' ки' as two tokens.
Skips with one line when the GGUF package is not installed."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gguf_fixture
from model import Tokenizer, Transformer, tag_positions

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.skipif(gguf_fixture.missing() is not None,
                                                   reason=gguf_fixture.missing() or "")]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    return gguf_fixture.build(tmp_path_factory.mktemp("smollm2") / "hf")


def test_the_converted_checkpoint_is_the_real_model(smollm2):
    from transformers import AutoModelForCausalLM
    tok, model = Tokenizer(smollm2), Transformer.from_pretrained(smollm2).eval()
    text = "The cat sat on the mat. It was a sunny day, and the children played in the park until the evening."
    ids = torch.tensor([tok.encode(text)])
    with torch.no_grad():
        ours, theirs = model(ids), AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)(ids).logits
    assert (ours - theirs).abs().max() < 2e-4  # model.py == transformers on the real weights
    # and they are a language model's (25 here; a q/k permutation left in place gives thousands)
    assert math.exp(torch.nn.functional.cross_entropy(ours[0, :-1], ids[0, 1:])) < 40
    assert tok.tag_tokens("ки") == (31338, 7872)


# Two GSM8K-style problems, each with a solution in Math-Shepherd's format; the second slips at its second step.
SOLUTIONS = [
    {"prompt": "Tom has 3 boxes with 4 pens in each box. He gives away 5 pens. How many pens does he have left?",
     "completions": ["Tom has 3 * 4 = 12 pens.", "After giving away 5 he has 12 - 5 = 7 pens.", "The answer is: 7"],
     "gold": "7"},
    {"prompt": "A shop sells apples for $2 each. Ana buys 6 apples and pays with a $20 bill. What is her change?",
     "completions": ["The apples cost 6 * 2 = 12 dollars.", "Her change is 20 - 12 = 9 dollars.", "The answer is: 9"],
     "gold": "8"},
]


def test_label_gsm8k_with_a_two_token_tag(smollm2, tmp_path):
    src, out = tmp_path / "solutions.jsonl", tmp_path / "labels.jsonl"
    src.write_text("".join(json.dumps(s) + "\n" for s in SOLUTIONS))
    r = subprocess.run([sys.executable, "shepherd.py", "label", "--task", "gsm8k", "--solutions", str(src),
                        "--model", str(smollm2), "--num-completions", "2", "--max-new-tokens", "48", "--seed", "0",
                        "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-2000:]
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["steps"] for x in recs] == [s["completions"] for s in SOLUTIONS]
    assert [x["correct"] for x in recs] == [True, False]
    for x in recs:
        assert len(x["hard"]) == len(x["soft"]) == 3
        assert all(s in (0.0, 0.5, 1.0) and h == int(s > 0) for h, s in zip(x["hard"], x["soft"]))  # N = 2
        assert x["hard"][-1] == int(x["correct"])  # the last step: its own answer
    # the completer forked after each tag but the last ('и', the tag's last token) and wrote N = 2 completions each
    assert all([len(a) for a in x["rollout_answers"]] == [2, 2] for x in recs)
    tok = Tokenizer(smollm2)
    text = SOLUTIONS[0]["prompt"] + "\n" + "\n".join(s + " ки" for s in SOLUTIONS[0]["completions"])
    assert len(tag_positions(tok.encode(text), tok.tag_tokens("ки"))) == 3
