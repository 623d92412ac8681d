"""sampler.py: greedy against a no-cache reference and transformers, forking, log-probs, sampling statistics against
the softmax, per-row seeds, stop conditions. Tiny random models on CPU."""
import numpy as np
import pytest
import torch

from model import ModelConfig, Transformer
from sampler import Sampler, child_seed, fork_generate, generate, generate_from_prefixes, sort_descending
from test_model import TINY, hf_model

# chi-square critical values at p = 0.001, by degrees of freedom
CHI2_001 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52, 6: 22.46, 7: 24.32, 8: 26.12, 9: 27.88}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matrices gain nothing from a second thread, and on a busy shared machine a BLAS call that waits for a
    descheduled thread takes 100x longer."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(seed=0, **overrides):
    torch.manual_seed(seed)
    m = Transformer(ModelConfig(**{**TINY, "sliding_window": 5, "eos_token_id": None, **overrides})).eval()
    with torch.no_grad():  # a sharper distribution than the default init, so greedy is well separated
        m.lm_head.weight.mul_(8)
    return m


def prompts_of(lengths, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, TINY["vocab_size"], (n,), generator=g).tolist() for n in lengths]


@torch.no_grad()
def greedy_reference(model, prompt, n):
    """Token by token, each one the argmax of a full forward pass over everything so far (no cache)."""
    seq = list(prompt)
    for _ in range(n):
        seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(prompt):]


@torch.no_grad()
def full_logits(model, prompt, new):
    """Logits predicting each new token, from one forward pass over prompt + new."""
    return model(torch.tensor([prompt + new]))[0, len(prompt) - 1:-1].float()


def test_greedy_matches_no_cache_reference_and_transformers(tmp_path):
    pytest.importorskip("transformers")
    hf = hf_model("mistral", dict(sliding_window=6))
    with torch.no_grad():
        hf.lm_head.weight.mul_(8)
    hf.save_pretrained(tmp_path, safe_serialization=True)
    model = Transformer.from_pretrained(tmp_path)
    model.config.eos_token_id = None  # run to the full length on both sides
    hf.generation_config.eos_token_id = None
    prompts = prompts_of([4, 11, 7, 2])
    n = 14  # prompt + new tokens go well past the window of 6
    out = generate(model, prompts, n, temperature=0)
    for p, o in zip(prompts, out):
        assert o.tokens == greedy_reference(model, p, n)
        with torch.no_grad():
            want = hf.generate(torch.tensor([p]), max_new_tokens=n, do_sample=False, pad_token_id=0)[0, len(p):]
        assert o.tokens == want.tolist()
        assert o.finish_reason == "length" and o.sampling_logprobs == [0.0] * n


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 5, 0.9)])
def test_logprobs_equal_log_softmax_of_a_full_forward(temperature, top_k, top_p):
    model = tiny()
    prompts = prompts_of([3, 9, 6, 12])
    out = generate(model, prompts, [10, 4, 10, 7], temperature=temperature, top_k=top_k, top_p=top_p, seed=5)
    for p, o in zip(prompts, out):
        logits = full_logits(model, p, o.tokens)
        idx = torch.arange(len(o.tokens)), torch.tensor(o.tokens)
        torch.testing.assert_close(torch.tensor(o.logprobs), logits.log_softmax(-1)[idx], atol=1e-5, rtol=0)
        # the sampling distribution: tempered, top-k, then top-p on what is left, renormalised
        scaled = logits / temperature
        kth = scaled.topk(top_k if top_k else scaled.shape[-1], -1).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        probs, order = scaled.softmax(-1).sort(-1, descending=True)
        before = probs.cumsum(-1) - probs
        cut = torch.zeros_like(scaled, dtype=torch.bool).scatter(1, order, before >= top_p)
        q = scaled.masked_fill(cut if top_p < 1 else torch.zeros_like(cut), float("-inf")).log_softmax(-1)
        assert torch.isfinite(q[idx]).all()  # every token drawn was inside the kept set
        torch.testing.assert_close(torch.tensor(o.sampling_logprobs), q[idx], atol=1e-5, rtol=0)


def test_forked_rows_equal_prefixes_run_from_scratch():
    model = tiny()
    seqs = prompts_of([20, 13])
    forks = [(0, 3), (1, 13), (0, 20), (0, 9), (1, 1)]
    # max_batch 4 with 2 samples per fork: chunks cut across sequences; a tiny prefill budget splits the prefill
    sampler = Sampler(model, max_batch=4, max_len=30, prefill_tokens=16)
    got = sampler.fork(seqs, forks, 6, num_samples=2, temperature=0)
    for (s, t), outs in zip(forks, got):
        want = generate(model, [seqs[s][:t]], 6, temperature=0)[0]
        for o in outs:
            assert o.tokens == want.tokens
            assert o.logprobs == pytest.approx(want.logprobs, abs=1e-5)
    # sampled: a forked row is the very row generate() gives for that prefix and seed
    got = fork_generate(model, seqs, forks, 5, num_samples=3, temperature=1.0, top_p=0.95, seeds=[11, 12, 13, 14, 15])
    for (s, t), fseed, outs in zip(forks, [11, 12, 13, 14, 15], got):
        want = generate(model, [seqs[s][:t]] * 3, 5, temperature=1.0, top_p=0.95,
                        seeds=[child_seed(fseed, j) for j in range(3)])
        assert [o.tokens for o in outs] == [w.tokens for w in want]


def test_forked_rows_draw_their_first_token_independently():
    model = tiny()
    seq = prompts_of([10])[0]
    (outs,) = generate_from_prefixes(model, seq, [6], num_samples=16, max_new_tokens=1, temperature=1.5, seed=0)
    assert len({o.tokens[0] for o in outs}) > 4  # one prefill, 16 distinct draws (not one draw broadcast)


def controlled_model(target_logits):
    """A 1-layer model whose next-token logits are the same known vector at every position, whatever the input:
    every embedding is the same vector and the attention and MLP outputs are zeroed."""
    V, H = len(target_logits), 16
    cfg = ModelConfig(**{**TINY, "vocab_size": V, "hidden_size": H, "num_hidden_layers": 1, "eos_token_id": None})
    m = Transformer(cfg).eval()
    with torch.no_grad():
        m.model.embed_tokens.weight.fill_(1.0)
        m.model.layers[0].self_attn.o_proj.weight.zero_()
        m.model.layers[0].mlp.down_proj.weight.zero_()
        m.lm_head.weight.copy_(torch.tensor(target_logits)[:, None].expand(V, H) / H)
    return m


def expected_distribution(logits, temperature, top_k, top_p):
    z = np.asarray(logits, dtype=np.float64) / temperature
    order = np.argsort(-z)
    keep = np.zeros(len(z), dtype=bool)
    keep[order[:top_k or len(z)]] = True
    p = np.where(keep, np.exp(z - z.max()), 0.0)
    p /= p.sum()
    before = np.cumsum(p[order]) - p[order]
    if top_p < 1:
        keep[order[before >= top_p]] = False
    p = np.where(keep, p, 0.0)
    return p / p.sum()


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.6, 0, 1.0), (1.5, 4, 1.0), (1.0, 0, 0.8),
                                                     (0.8, 6, 0.7)])
def test_sampling_frequencies_match_the_distribution(temperature, top_k, top_p):
    target = [1.2, -0.3, 0.4, 2.0, -1.0, 0.9, 0.0, 1.6]
    model = controlled_model(target)
    with torch.no_grad():
        logits = model(torch.tensor([[3, 1, 4]]))[0, -1].double().numpy()
    assert np.allclose(logits, target, atol=1e-3)
    p = expected_distribution(logits, temperature, top_k, top_p)
    rows, per_row = 500, 8
    (outs,) = generate_from_prefixes(model, [3, 1, 4], [3], rows, per_row, temperature=temperature, top_k=top_k,
                                     top_p=top_p, seed=1234, max_batch=512)
    tokens = np.array([o.tokens for o in outs]).ravel()
    assert tokens.size == rows * per_row
    counts = np.bincount(tokens, minlength=len(p))
    kept = p > 0
    assert counts[~kept].sum() == 0  # nothing outside the top-k / top-p set, ever
    expected = p[kept] * tokens.size
    chi2 = float(((counts[kept] - expected) ** 2 / expected).sum())
    print(f"T={temperature} k={top_k} p={top_p}: chi2 = {chi2:.2f} (df {kept.sum() - 1})")
    assert chi2 < CHI2_001[int(kept.sum()) - 1]
    slp = np.array([o.sampling_logprobs for o in outs]).ravel()
    assert np.allclose(slp, np.log(p[tokens]), atol=1e-4)  # the log-prob under the distribution sampled from


def test_the_cpu_sort_gives_torchs_values():
    """top-p sorts through numpy on CPU (torch's CPU sort is 30x slower): the same values, ties and -inf included."""
    x = torch.randn(5, 300)
    x[:, ::7] = x[:, :1]  # ties
    x[1, 10:40] = float("-inf")
    assert torch.equal(sort_descending(x), x.sort(-1, descending=True).values)


def test_a_row_does_not_depend_on_its_batch():
    model = tiny()
    prompts = prompts_of([5, 12, 3, 8, 9])
    seeds = [101, 7, 2**40 + 3, 55, 9]
    kw = dict(temperature=1.0, top_k=20, top_p=0.9)
    alone = [generate(model, [p], 9, seeds=[s], **kw)[0] for p, s in zip(prompts, seeds)]
    together = generate(model, prompts, 9, seeds=seeds, **kw)
    reversed_chunked = generate(model, prompts[::-1], 9, seeds=seeds[::-1], max_batch=2, **kw)[::-1]
    for a, b, c in zip(alone, together, reversed_chunked):
        assert a.tokens == b.tokens == c.tokens
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5) and a.logprobs == pytest.approx(c.logprobs, abs=1e-5)
    # the same prompt three times (prefilled once, then forked): each row is still the row it is alone
    dup = generate(model, [prompts[1]] * 3, 9, seeds=seeds[:3], **kw)
    assert [o.tokens for o in dup] == [generate(model, [prompts[1]], 9, seeds=[s], **kw)[0].tokens for s in seeds[:3]]
    assert len({tuple(o.tokens) for o in dup}) == 3
    # one base seed: reproducible; another base seed: other samples
    assert [o.tokens for o in generate(model, prompts, 9, seed=3, **kw)] == \
        [o.tokens for o in generate(model, prompts, 9, seed=3, **kw)]
    assert [o.tokens for o in generate(model, prompts, 9, seed=3, **kw)] != \
        [o.tokens for o in generate(model, prompts, 9, seed=4, **kw)]
    torch.manual_seed(0)  # seed=None: drawn from torch's global generator
    a = generate(model, prompts, 9, **kw)
    torch.manual_seed(0)
    assert [o.tokens for o in a] == [o.tokens for o in generate(model, prompts, 9, **kw)]


def test_stop_conditions_end_exactly_the_right_rows(monkeypatch):
    packed = []  # rows that end early let the rest be packed into a smaller batch: that path runs here
    compact = Sampler._compact
    monkeypatch.setattr(Sampler, "_compact", lambda self, *a: packed.append(a) or compact(self, *a))
    model = tiny()
    prompts = prompts_of([4, 7, 5, 10, 6])
    free = [greedy_reference(model, p, 12) for p in prompts]
    eos = free[0][3] if free[0][3] not in free[0][:3] else free[0][0]  # ends row 0 by eos
    stop = next(t for t in free[1][2:] if t != eos)  # ends row 1 by a stop id
    limits = [12, 12, 3, 12, 1]
    for config_eos, stops in (([eos, 96], {eos, 96, stop}), (eos, {eos, stop})):  # eos as a list, and as an int
        model.config.eos_token_id = config_eos
        out = generate(model, prompts, limits, temperature=0, stop_ids=[stop])
        for i, (o, f, limit) in enumerate(zip(out, free, limits)):
            n = min([k + 1 for k, t in enumerate(f) if t in stops] + [limit])
            assert o.tokens == f[:n], i
            assert o.finish_reason == ("stop" if f[n - 1] in stops else "length"), i
            assert len(o.logprobs) == len(o.sampling_logprobs) == n
        assert out[0].tokens[-1] in stops and out[1].tokens[-1] in stops  # both ended early, by a stop
        assert len(out[0].tokens) < 12 and len(out[1].tokens) < 12 and out[4].tokens == free[4][:1]
    assert packed, "no batch compaction happened"
    assert generate(model, prompts[:2], [0, 2], temperature=0)[0].tokens == []


def test_sampler_reuse_and_limits():
    model = tiny()
    sampler = Sampler(model, max_batch=3, max_len=20)
    p = prompts_of([6, 9])
    first = sampler.generate(p, 5, temperature=0)
    assert sampler.cache_len == 9 + 5  # sized to the call on CPU, not to max_len
    again = sampler.generate(p[::-1], 5, temperature=0)[::-1]  # stale cache contents must not leak into a new call
    assert [o.tokens for o in first] == [o.tokens for o in again] == [greedy_reference(model, q, 5) for q in p]
    longer = sampler.generate(p, 11, temperature=0)  # needs more positions: the cache grows
    assert sampler.cache_len == 20 and [o.tokens for o in longer] == [greedy_reference(model, q, 11) for q in p]
    with pytest.raises(ValueError, match="do not fit max_len"):
        sampler.generate(p, 12)
    with pytest.raises(ValueError, match="prefix length 0"):
        sampler.generate([[]], 2)
    with pytest.raises(ValueError, match="top_p"):
        sampler.generate(p, 2, top_p=0.0)


class GraphLike(Sampler):
    """On CPU, the two ways a CUDA-graphed decode step differs from the eager one: it attends over a kv length
    rounded up (here: the whole cache, whose stale slots hold garbage) and it always runs the full sampling path
    (no skipping of the stochastic or filtering work, whatever the rows ask for)."""

    def _reserve(self, length):
        super()._reserve(length)
        g = torch.Generator().manual_seed(7)
        for t in (*self.cache.k, *self.cache.v):
            t.copy_(torch.randn(t.shape, generator=g) * 100)  # what a slot holds before it is written: anything

    def _kv_len(self, n):
        return self.cache_len

    def _step(self, b, kv_len):
        return self._decode(b, kv_len)


def test_what_a_cuda_graph_computes_equals_the_eager_step():
    """What the graphs change (above) must not change a token: masked stale slots weigh exactly nothing, and the
    full sampling path gives greedy rows their argmax. Checked on CPU, where CI runs; the real graphs are
    compared with eager in the CUDA test below."""
    model = tiny()
    prompts = prompts_of([5, 12, 3, 8, 9])
    limits = [20, 3, 20, 11, 20]
    for kw in (dict(temperature=0), dict(temperature=1.0, seed=0), dict(temperature=0.7, top_k=20, top_p=0.9, seed=1,
                                                                         stop_ids=[5])):
        eager = Sampler(model, max_batch=8, max_len=40).generate(prompts, limits, **kw)
        like = GraphLike(model, max_batch=8, max_len=40).generate(prompts, limits, **kw)
        assert [o.tokens for o in eager] == [o.tokens for o in like]
        assert [o.finish_reason for o in eager] == [o.finish_reason for o in like]
        for a, b in zip(eager, like):
            np.testing.assert_allclose(a.logprobs, b.logprobs, rtol=0, atol=1e-5)  # fp32 sums over more slots
            np.testing.assert_allclose(a.sampling_logprobs, b.sampling_logprobs, rtol=0, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graphs_give_the_same_tokens_as_eager():
    model = tiny().cuda()
    prompts = prompts_of([5, 12, 3, 8, 9])
    kw = dict(temperature=1.0, top_k=20, top_p=0.9, seed=0, stop_ids=[5])
    eager = generate(model, prompts, [20, 3, 20, 11, 20], cuda_graphs=False, **kw)
    graphed = generate(model, prompts, [20, 3, 20, 11, 20], cuda_graphs=True, **kw)
    assert [o.tokens for o in eager] == [o.tokens for o in graphed]
    assert [o.logprobs for o in eager] == [o.logprobs for o in graphed]
