"""Step tags of any length: training, scoring, labeling and PPO read the PRM at the same positions (the last token of
each tag, model.tag_positions), on two real tokenizers (byte-level BPE and sentencepiece-style), for a one-token
tag, a multi-token tag and a tag added as a token of its own (--add-tag-token)."""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import data
import label
import ppo
import shepherd
import train
import verify
from data import gsm8k
from data.formats import StepExample
from model import ModelConfig, PRMHead, Tokenizer, Transformer, step_logits, step_scores, tag_positions
from sampler import Completion

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SMOL, MISTRAL = SHARED / "smollm2-135m-instruct", SHARED / "mistral-7b-v0.1"


def needs(folder):
    return pytest.mark.skipif(not (folder / "tokenizer.json").exists(), reason=f"{folder} is absent")


def test_tag_positions_by_hand():
    assert tag_positions([5, 7, 50, 9, 50], 50) == [2, 4]  # one token: where it is
    assert tag_positions([5, 7, 8, 9, 7, 8], (7, 8)) == [2, 5]  # several: the last token of each occurrence
    assert tag_positions([8, 7, 9, 8, 7], (7, 8)) == []  # the parts alone, or in the wrong order, are no tag
    assert tag_positions([7, 7, 7, 7], (7, 7)) == [1, 3]  # occurrences do not overlap


# (tokenizer, tag, add it as a token?) -> the positions of the tags' last tokens in "Q\nS 2+2=4 TAG\nThe answer is:
# 4 TAG" and the tag's ids, counted by hand from the tokens written beside each case. Q = "Is 40ки> 4?" and
# S = "40ки>" hold a tag's last token alone ('и' with SmolLM2, '>' with Mistral) in the prompt and in the response:
# no tag, read nowhere.
# SmolLM2 (no BOS): Is Ġ 4 0 к и > Ġ 4 ? (0-9), Ċ 4 0 к и > Ġ 2 + 2 = 4 (10-21), then
# Mistral (BOS): <s> ▁Is ▁ 4 0 ки > ▁ 4 ? (0-9), <0x0A> 4 0 ки > ▁ 2 + 2 = 4 (10-20), then
CASES = {
    # 22 Ġ§, 23 Ċ, 24 The, 25 Ġanswer, 26 Ġis, 27 :, 28 Ġ, 29 4, 30 Ġ§
    "smollm2-one-token": (SMOL, "§", False, [22, 30], (20850,)),
    # 22 Ġк 23 и, 24 Ċ, ..., 30 4, 31 Ġк 32 и: read at 'и'
    "smollm2-multi-token": (SMOL, "ки", False, [23, 32], (31338, 7872)),
    # the same text with ' ки' one added token (49152, the first id past the vocabulary): as with '§'
    "smollm2-added": (SMOL, "ки", True, [22, 30], (49152,)),
    # 21 ▁ки, 22 <0x0A>, 23 The, 24 ▁answer, 25 ▁is, 26 :, 27 ▁, 28 4, 29 ▁ки
    "mistral-one-token": (MISTRAL, "ки", False, [21, 29], (12902,)),
    # 21 ▁< 22 step 23 >, 24 <0x0A>, ..., 30 4, 31 ▁< 32 step 33 >
    "mistral-multi-token": (MISTRAL, "<step>", False, [23, 33], (523, 7691, 28767)),
    "mistral-added": (MISTRAL, "<step>", True, [21, 29], (32000,)),
}
QUESTION, STEPS = "Is 40ки> 4?", ["40ки> 2+2=4", "The answer is: 4"]


class ForkRecorder:
    """Stands in for the completer's sampler: records where each rollout forks, answers '4'."""

    def __init__(self, tok):
        self.tok, self.forks = tok, []
        self.model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=512))

    def fork(self, seqs, forks, max_new_tokens, num_samples, **kw):
        self.forks += [t for _, t in forks]
        return [[Completion(self.tok.encode(" The answer is: 4", bos=False, eos=False), [], [], "stop")] * num_samples
                for _ in forks]


@pytest.mark.parametrize("case", list(CASES))
def test_training_scoring_labeling_and_ppo_read_the_same_positions(case):
    folder, tag, add, want, tag_ids = CASES[case]
    if not (folder / "tokenizer.json").exists():
        pytest.skip(f"{folder} is absent")
    tok = Tokenizer(folder)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=32,
                                    num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                    max_position_embeddings=64, sliding_window=None)).eval()
    if add:  # as train --add-tag-token does it
        model.init_token_rows([tok.add_token(tag)])
    head = PRMHead.from_tokenizer(tok, tag)
    assert head.tag == tag_ids
    prompt_text = data.format_prompt(QUESTION)
    text = prompt_text + "\n".join(f"{s} {tag}" for s in STEPS)
    ids = tok.encode(text)
    assert tag_positions(ids, head.tag) == want
    # training: the positions the PRM loss supervises
    ex = train.encode_steps(tok, head, StepExample(text, [1.0, 0.0], 0.0), "prm")
    assert ex.ids == ids and [i for i, m in enumerate(ex.tag_mask) if m] == want
    # scoring: step_scores reads p(+) at exactly those positions
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0]
        got = step_scores(model, torch.tensor([ids]), head)[0]
    assert got == pytest.approx([logits[i, [head.good_id, head.bad_id]].softmax(-1)[0].item() for i in want], abs=1e-6)
    # labeling: a rollout forks right after every tag but the last (the tokens a generator wrote after the prompt)
    prompt = tok.encode(prompt_text)
    assert ids[:len(prompt)] == prompt
    labeler = label.Labeler.__new__(label.Labeler)
    labeler.args = SimpleNamespace(seed=0, num_completions=2, max_new_tokens=16, temperature=1.0, top_p=1.0)
    labeler.task, labeler.tok, labeler.head, labeler.comp = gsm8k, tok, head, ForkRecorder(tok)
    labeler.stats = dict(problems=0, solutions=0, steps=0, rollouts=0, generated_tokens=0, prefill_tokens=0, skipped=0)
    problem = data.Problem("p", QUESTION, "4")
    [rec] = labeler.label([label.Solution(problem, 0, STEPS, ids[len(prompt):] + [tok.eos_id])])
    assert [t - 1 for t in labeler.comp.forks] == want[:-1] and rec["hard"] == [1, 1]
    # PPO: each step's reward goes on its tag's last token, with the p(+) that scoring gives
    response = ids[len(prompt):] + [tok.eos_id]
    steps = ppo.response_steps(response, head.tag, True, tok.decode)
    assert [len(prompt) + last for _, last in steps] == want
    with torch.no_grad():
        p = ppo.step_end_probs(model, [prompt], [response], [steps], head, 0, "cpu")
    assert p[0, [last for _, last in steps]].tolist() == pytest.approx(got, abs=1e-6)
    # an untagged last step is read at an appended tag: the same score as when it is tagged
    untagged = ids[len(prompt):want[-1] + 1 - len(head.tag)] + [tok.eos_id]
    steps_u = ppo.response_steps(untagged, head.tag, True, tok.decode)
    assert len(steps_u) == 2
    with torch.no_grad():
        p_u = ppo.step_end_probs(model, [prompt], [untagged], [steps_u], head, 0, "cpu")
    assert p_u[0, [last for _, last in steps_u]].tolist() == pytest.approx(got, abs=1e-6)


@pytest.mark.parametrize("case", ["smollm2-added", "mistral-added"])
def test_ppo_rewards_from_a_reward_model_with_the_tag_as_a_token_of_its_own(case):
    """ppo.py with a PRM trained by train --add-tag-token: the policy writes the tag as several tokens, the reward
    model reads it as its one added token (ppo.rm_view), and every step's reward is the score verify gives the text
    (step_scores on the reward model's own encoding), an untagged tail included. Any other tokenizer is refused."""
    folder, tag, _, _, _ = CASES[case]
    if not (folder / "tokenizer.json").exists():
        pytest.skip(f"{folder} is absent")
    tok, rm_tok = Tokenizer(folder), Tokenizer(folder)
    torch.manual_seed(0)
    rm = Transformer(ModelConfig(vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=32,
                                 num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                 max_position_embeddings=64, sliding_window=None)).eval()
    rm.init_token_rows([rm_tok.add_token(tag)])
    head, rm_head = PRMHead.from_tokenizer(tok, tag), ppo.reward_model_head(tok, rm_tok, tag)
    assert len(head.tag) > 1 and rm_head.tag == (rm_tok.vocab_size - 1,)
    prompt_text = data.format_prompt(QUESTION)
    text = prompt_text + "\n".join(f"{s} {tag}" for s in STEPS)
    with torch.no_grad():
        want = step_scores(rm, torch.tensor([rm_tok.encode(text)]), rm_head)[0]
    assert len(want) == 2
    prompt, ids = tok.encode(prompt_text), tok.encode(text)
    tagged = ids[len(prompt):] + [tok.eos_id]
    untagged = ids[len(prompt):tag_positions(ids, head.tag)[-1] + 1 - len(head.tag)] + [tok.eos_id]
    steps = [ppo.response_steps(r, head.tag, True, tok.decode) for r in (tagged, untagged)]
    assert [len(s) for s in steps] == [2, 2]
    with torch.no_grad():
        p = ppo.step_end_probs(rm, [prompt] * 2, [tagged, untagged], steps, head, 0, "cpu", rm_head)
    for b in range(2):
        assert p[b, [last for _, last in steps[b]]].tolist() == pytest.approx(want, abs=1e-6)
    other = Tokenizer(folder)
    other.add_token("<step2>")
    with pytest.raises(shepherd.InputError, match="the reward model's tokenizer differs"):
        ppo.reward_model_head(tok, other, tag)


@needs(MISTRAL)
def test_mistral_defaults_are_the_released_prms():
    head = PRMHead.from_tokenizer(Tokenizer(MISTRAL))
    assert (head.tag, head.good_id, head.bad_id) == ((12902,), 648, 387)


@needs(SMOL)
def test_plus_minus_fall_back_to_bare_tokens(tmp_path):
    """A tokenizer without ' +' / ' -' as one token: the bare '+' / '-' rows are used."""
    from tokenizers import Tokenizer as HFTokenizer
    j = json.loads((SMOL / "tokenizer.json").read_text())
    pair = lambda m: m.split(" ") if isinstance(m, str) else m  # noqa: E731
    # drop the merges that make 'Ġ+' and 'Ġ-': ' +' is then two tokens, 'Ġ' and '+'
    j["model"]["merges"] = [m for m in j["model"]["merges"] if "".join(pair(m)) not in ("Ġ+", "Ġ-")]
    (tmp_path / "tokenizer.json").write_text(json.dumps(j))
    (tmp_path / "tokenizer_config.json").write_text((SMOL / "tokenizer_config.json").read_text())
    tok = Tokenizer(tmp_path)
    assert len(tok.tag_tokens("+")) == 2  # Ġ and +
    bare = HFTokenizer.from_file(str(tmp_path / "tokenizer.json"))
    head = PRMHead.from_tokenizer(tok)
    assert (head.good_id, head.bad_id) == (bare.token_to_id("+"), bare.token_to_id("-")) == (27, 29)
    with pytest.raises(ValueError, match="expected a single token"):
        PRMHead.from_tokenizer(tok, good="++-+")


def test_init_token_rows_start_at_the_mean():
    for tied in (True, False):
        torch.manual_seed(0)
        m = Transformer(ModelConfig(vocab_size=10, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                    num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tied))
        emb, out = m.model.embed_tokens.weight.detach().clone(), m.lm_head.weight.detach().clone()
        m.init_token_rows([11])  # one past the end: rows 10 (unused) and 11 (the new token)
        assert m.config.vocab_size == 12 and m.model.embed_tokens.weight.shape == m.lm_head.weight.shape == (12, 8)
        assert torch.equal(m.model.embed_tokens.weight[:10], emb) and torch.equal(m.lm_head.weight[:10], out)
        assert torch.allclose(m.model.embed_tokens.weight[11], emb.mean(0))
        assert torch.allclose(m.lm_head.weight[11], out.mean(0))
        assert (m.lm_head.weight is m.model.embed_tokens.weight) == tied
        assert m(torch.tensor([[1, 11]])).shape == (1, 2, 12)


@needs(SMOL)
def test_train_add_tag_token_round_trips_through_transformers(tmp_path):
    """train --add-tag-token on a SmolLM2-tokenizer model (' ки' two tokens): the checkpoint's tokenizer has ' ки' as
    one token, its embedding row was added, and transformers reads it back with the same ids and the same step
    scores, in the dtype of the saved tensors (the base config claims bfloat16: a stale key, dropped)."""
    transformers = pytest.importorskip("transformers")
    tok = Tokenizer(SMOL)
    torch.manual_seed(0)
    base = Transformer(ModelConfig(model_type="llama", vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=32,
                                   num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                   max_position_embeddings=128, tie_word_embeddings=True, bos_token_id=None,
                                   eos_token_id=tok.eos_id, extra={"dtype": "bfloat16", "transformers_version": "5.0.0"}))
    base.save_pretrained(tmp_path / "base", tokenizer_dir=SMOL)
    rows = [{"prompt": f"What is {a} + 2?", "completions": [f"{a} + 2 = {a + 2}", f"The answer is: {a + 2}"],
             "labels": [True, a % 2 == 0]} for a in range(8)]
    (tmp_path / "steps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "prm"
    assert shepherd.main(["train", "--objective", "prm", "--model", str(tmp_path / "base"), "--data",
                          str(tmp_path / "steps.jsonl"), "--out", str(out), "--add-tag-token", "--steps", "3",
                          "--batch-size", "4", "--heldout", "0", "--warmup", "1", "--lr", "1e-2"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["vocab_size"] == 49153 and cfg["torch_dtype"] == "float32"
    assert "dtype" not in cfg and "transformers_version" not in cfg
    ours, tok = Transformer.from_pretrained(out), Tokenizer(out)
    head = PRMHead.from_tokenizer(tok)
    assert head.tag == (49152,) and (head.good_id, head.bad_id) == (1232, 731)
    trained = ours.model.embed_tokens.weight[49152]
    assert not torch.allclose(trained, base.model.embed_tokens.weight.mean(0))  # the new row was trained
    texts = [data.format_prompt(r["prompt"]) + data.join_steps(r["completions"]) for r in rows[:3]]
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert next(hf.parameters()).dtype == torch.float32
    for text in texts:
        ids = tok.encode(text)
        assert hf_tok(text).input_ids == ids and ids.count(49152) == 2
        with torch.no_grad():
            logits = hf(torch.tensor([ids])).logits[0]
            got = step_scores(ours, torch.tensor([ids]), head)[0]
        want = [logits[i, [head.good_id, head.bad_id]].softmax(-1)[0].item() for i in tag_positions(ids, head.tag)]
        assert got == pytest.approx(want, abs=1e-5)
        assert (step_logits(ours, torch.tensor([ids]), head)[0] - logits[:, [head.good_id, head.bad_id]]).abs().max() < 1e-4


def test_bad_tag_is_an_input_error(tmp_path, capsys):
    from data import synthetic
    synthetic.build_tokenizer(tmp_path)
    with pytest.raises(shepherd.InputError, match=r"tokenizer.json: --tag/--good/--bad: '\+\+\+'"):
        shepherd.prm_head(Tokenizer(tmp_path), "ки", good="+++")
    with pytest.raises(shepherd.InputError, match=r"tokenizer.json: --tag/--good/--bad: '' after a space"):
        shepherd.prm_head(Tokenizer(tmp_path), "")
    assert shepherd.main(["label", "--tag", " ", "--solutions", str(tmp_path / "none.jsonl")]) == 2
    assert "tokenizer.json: --tag/--good/--bad: ' ' after a space" in capsys.readouterr().err


def test_a_tag_of_the_models_own_reads_text_written_with_ki(tmp_path):
    """--tag <step>: files and graders keep Math-Shepherd's ' ки'; training and scoring read the model's own tag in
    its place (data.to_model_tag), and what the model writes is read back in ки's format (data.from_model_tag)."""
    from data import synthetic
    synthetic.build_tokenizer(tmp_path)
    tok = Tokenizer(tmp_path)
    tok.add_token("<step>")
    head = shepherd.prm_head(tok, "<step>")
    steps = ["3 * 4 = 12", "12 - 5 = 7", "The answer is: 7"]
    text = data.format_prompt("Tom has 3 boxes with 4 apples in each. He loses 5. How many?") + data.join_steps(steps)
    mine = data.to_model_tag(text, "<step>")
    assert mine == text.replace(" ки", " <step>") and data.from_model_tag(mine, "<step>") == text
    assert data.to_model_tag("Is 40 ки> 4 ки? 2 ки", "<step>") == "Is 40 ки> 4 ки? 2 <step>"  # step ends only
    ids = tok.encode(mine)
    want = [i for i, x in enumerate(ids) if x == head.tag[0]]
    assert len(want) == 3 and tok.tag_tokens("<step>") == head.tag
    ex = train.encode_steps(tok, head, StepExample(text, [1.0, 0.0, 0.0], 0.0), "prm")
    assert ex.ids == ids and [i for i, m in enumerate(ex.tag_mask) if m] == want
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=32,
                                    num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                    max_position_embeddings=128, sliding_window=None)).eval()
    with torch.no_grad():
        want_scores = step_scores(model, torch.tensor([ids]), head)[0]
    assert verify.score_solutions(model, tok, head, [text]) == [pytest.approx(want_scores, abs=1e-6)]
    assert len(want_scores) == 3
