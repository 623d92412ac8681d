"""Generation: the one place Shepherd samples text (labeling and PPO rollouts, best-of-N).

  1. Seeding  - per-row 63-bit seeds; a row's n-th uniform is a hash of (seed, n), sharing no state
                with other rows: its tokens do not depend on its batch, so jobs resume exactly.
  2. sample() - logits -> token by inverse CDF after temperature, top-k and top-p; temp 0 is greedy.
  3. Sampler  - a static KV cache (and, on CUDA, captured decode graphs). One call:
       prefill  every sequence once, right-padded, each row at its own positions;
       fork     a row continuing the first t tokens of a prefilled sequence copies its cache rows
                and samples its first token from the prefill logits at t-1;
       decode   one token per live row per step; finished rows are packed out when the live ones
                fit a smaller batch bucket; a row ends after a stop token (kept) or max_new_tokens;
       graphs   on CUDA each (batch bucket, kv-length bucket) decode step is captured once.
  4. generate / fork_generate / generate_from_prefixes - wrappers sizing a Sampler to one call.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from model import KVCache, Transformer

MASK32, MASK64 = 0xFFFFFFFF, (1 << 64) - 1


@dataclass
class Completion:
    """One row's result."""
    tokens: list[int]  # the new tokens; a stop token that ended the row is the last one
    logprobs: list[float]  # log p(token) under the raw model (temperature 1, unfiltered)
    sampling_logprobs: list[float]  # log q(token), q the distribution sampled; 0 if greedy
    finish_reason: str  # "stop" (ended by eos / a stop id) or "length" (its max_new_tokens)


# -------------------------------------------------------------------------------------------------
# 1. Seeding


def _mix64(x: int) -> int:
    """A bijective 64-bit integer mix (splitmix64's finaliser), on Python ints."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & MASK64
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & MASK64
    return x ^ (x >> 31)


def child_seed(seed: int, index: int) -> int:
    """The 63-bit seed of child `index` of `seed` (row i of a call, sample j of a fork)."""
    return _mix64(_mix64(seed & MASK64) ^ index) >> 1


def row_key(seed: int) -> int:
    """A row's 32-bit noise key: its seed, mixed (so nearby seeds give unrelated streams)."""
    return _mix64(seed & MASK64) & MASK32


def uniform(keys: torch.Tensor, counters: torch.Tensor) -> torch.Tensor:
    """One U[0, 1) float64 per row, a pure function of (key, counter), like Philox but per row:
    a Weyl step (key + counter * odd constant), then xor-shift / multiply rounds. Values live in
    int64 and multipliers are below 2**31, so no product overflows: same bits on every device."""
    x = (keys + counters * 0x6A09E667) & MASK32
    for m in (0x5BD1E995, 0x2C1B3C6D, 0x297A2D39):
        x = ((x ^ (x >> 16)) * m) & MASK32
    return (x ^ (x >> 16)).double() / 2.0**32


# -------------------------------------------------------------------------------------------------
# 2. Sampling


def sort_descending(x: torch.Tensor) -> torch.Tensor:
    """The values of each row of x, largest first (on CPU through numpy: a far faster sort)."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.sort(x.detach().numpy(), -1)[..., ::-1].copy())
    return x.sort(-1, descending=True).values


def top_k_top_p(scaled: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Set to -inf what top-k, then top-p, leave out of each row of (B, V) tempered logits; top_k 0
    and top_p 1 keep everything. Top-p keeps the most likely tokens until their mass reaches top_p
    (the one crossing it included). The cut is a threshold on the value, so ties are kept."""
    V = scaled.shape[-1]
    desc = sort_descending(scaled)
    rank = torch.arange(V, device=scaled.device)
    keep = rank < torch.where(top_k > 0, top_k, V)[:, None]
    p = desc.masked_fill(~keep, float("-inf")).softmax(-1)
    mass_before = F.pad(p.cumsum(-1)[:, :-1], (1, 0))  # monotone, exactly 0 at the top token
    keep &= (mass_before < top_p[:, None]) | (top_p[:, None] >= 1)
    threshold = desc.gather(1, keep.sum(-1, keepdim=True) - 1)  # keep is a prefix of the ranks
    return scaled.masked_fill(scaled < threshold, float("-inf"))


def sample(logits, temperature, top_k, top_p, keys, counters, stochastic=True, filtering=True):
    """Pick one token per row of logits (B, V); the other arguments are (B,), one setting per row.
    Returns (tokens, logprobs, sampling_logprobs), each (B,): logprobs under the RAW logits, as a
    forward pass recomputes them; sampling_logprobs under the tempered, filtered distribution drawn
    from (0 if greedy; for importance weights). temperature 0 is greedy (argmax), else inverse CDF
    with the row's uniform(key, counter). stochastic / filtering False (no row samples / filters)
    only skip work that cannot change the result; a captured CUDA graph always runs it all."""
    logits = logits.float()
    raw = logits.log_softmax(-1)
    best = logits.argmax(-1)
    pick = lambda t, idx: t.gather(1, idx[:, None])[:, 0]  # noqa: E731
    if not stochastic:
        return best, pick(raw, best), torch.zeros_like(best, dtype=torch.float)
    greedy = temperature <= 0
    scaled = logits / torch.where(greedy, 1.0, temperature)[:, None]
    if filtering:
        scaled = top_k_top_p(scaled, top_k, top_p)
    q = scaled.log_softmax(-1)
    cdf = q.exp().double().cumsum(-1)  # float64: a running sum over 32k tokens stays exact enough
    u = uniform(keys, counters) * cdf[:, -1]  # u < total mass: the first cdf > u has non-zero mass
    drawn = torch.searchsorted(cdf, u[:, None], right=True)[:, 0].clamp_(max=logits.shape[-1] - 1)
    tokens = torch.where(greedy, best, drawn)
    return tokens, pick(raw, tokens), torch.where(greedy, 0.0, pick(q, tokens))


# -------------------------------------------------------------------------------------------------
# 3. The Sampler


def _cache_rows(cache: KVCache, start: int, stop: int):
    """Rows [start, stop) of the cache as a cache of their own, rows 0.. (views: no copy)."""
    return SimpleNamespace(k=[k[start:stop] for k in cache.k], v=[v[start:stop] for v in cache.v])


@dataclass
class _Row:  # continue sequences[seq][:prefix] by up to max_new tokens drawn with `seed`
    seq: int
    prefix: int
    max_new: int
    seed: int

    def __post_init__(self):
        self.seed = int(self.seed) & (2**63 - 1)  # any Python int: non-negative, fits int64


class Sampler:
    """A static KV cache of max_batch rows on the model's device and dtype, plus, on CUDA, captured
    decode graphs. Build one and reuse it across calls; more rows than max_batch run in chunks.
    A row needs prompt + max_new_tokens <= max_len (capped at max_position_embeddings). max_len is a
    limit, not an allocation (2 * layers * kv_heads * head_dim elements per row and position): the
    cache grows to what a call needs (on CUDA a power of two); growing drops the captured graphs."""

    STATE = ("tok", "pos", "count", "key", "top_k", "last", "row", "temp", "top_p", "done")

    def __init__(self, model: Transformer, max_batch: int = 64, max_len: int = 2048,
                 cuda_graphs: bool | None = None, prefill_tokens: int = 16384):
        p = next(model.parameters())
        self.model, self.device, cfg = model, p.device, model.config
        self.max_batch, self.max_len = max_batch, min(max_len, cfg.max_position_embeddings)
        self.cache, self.cache_len = None, 0
        self.prefill_tokens = prefill_tokens  # per prefill forward: bounds attention scores' memory
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError("cuda_graphs=True needs the model on a CUDA device")
        on = cuda_graphs or (cuda_graphs is None and self.device.type == "cuda")
        self.graphs = {} if on else None
        self.pool = torch.cuda.graph_pool_handle() if self.graphs is not None else None
        # per-row state, by batch row == cache row; static, so a CUDA graph reads fixed addresses
        dtypes = dict(temp=torch.float, top_p=torch.float, done=torch.bool)
        self.state = {k: torch.zeros(max_batch, dtype=dtypes.get(k, torch.long), device=self.device)
                      for k in self.STATE}
        self.buckets = sorted({min(2**i, max_batch) for i in range(max_batch.bit_length() + 1)})
        # one chunk's settings and outputs, set by _chunk for _emit, _step, _compact and _collect
        self.flags: tuple[bool, bool] = (True, True)  # (sampling, top-k/top-p filtering)
        self.stop: torch.Tensor | None = None  # stop token ids
        self.out: tuple | None = None  # (tokens, logprobs, sampling logprobs) by slot and step
        self.results: list[Completion | None] = []  # by chunk row (n: the padding slots)

    # -- public API -------------------------------------------------------------------------------

    def room(self, prompts: list[list[int]], max_new_tokens: int) -> list[int]:
        """Per prompt: max_new_tokens, or fewer where the prompt leaves less of the context."""
        return [min(max_new_tokens, self.max_len - len(p)) for p in prompts]

    def generate(self, prompts: list[list[int]], max_new_tokens: int | list[int],
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, stop_ids=(),
                 seed: int | None = None, seeds: list[int] | None = None) -> list[Completion]:
        """One Completion per prompt: up to max_new_tokens (an int, or one per prompt) new tokens,
        ending after eos or any of stop_ids (that token included). temperature 0 is greedy; top_k 0
        and top_p 1 are off. Row i draws with seeds[i], else child_seed(seed, i); seed None takes a
        base seed from torch's global generator (so torch.manual_seed makes a call reproducible)."""
        limits = _per_row(max_new_tokens, len(prompts), "max_new_tokens")
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        base = _base_seed(seed)
        first: dict[tuple, int] = {}  # identical prompts (best-of-N) are prefilled once and forked
        rows = [_Row(first.setdefault(tuple(p), i), len(p), m,
                     seeds[i] if seeds is not None else child_seed(base, i))
                for i, (p, m) in enumerate(zip(prompts, limits))]
        return self._run(prompts, rows, temperature, top_k, top_p, stop_ids)

    def fork(self, sequences: list[list[int]], forks: list[tuple[int, int]],
             max_new_tokens: int | list[int], num_samples: int = 1, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, stop_ids=(), seed: int | None = None,
             seeds: list[int] | None = None) -> list[list[Completion]]:
        """For each fork (seq_index, prefix_len): num_samples completions of that prefix.
        Each sequence is prefilled once per batch that needs it, up to its longest prefix asked.
        max_new_tokens may be one per fork. Sample j of fork i draws with child_seed(seeds[i], j),
        where seeds[i] defaults to child_seed(seed, i)."""
        limits = _per_row(max_new_tokens, len(forks), "max_new_tokens")
        if seeds is not None and len(seeds) != len(forks):
            raise ValueError(f"{len(seeds)} seeds for {len(forks)} forks")
        base = _base_seed(seed)
        rows = []
        for i, ((s, t), m) in enumerate(zip(forks, limits)):
            if not 0 <= s < len(sequences):
                raise ValueError(f"fork {i}: sequence index {s} out of range "
                                 f"({len(sequences)} sequences)")
            fork_seed = seeds[i] if seeds is not None else child_seed(base, i)
            rows += [_Row(s, t, m, child_seed(fork_seed, j)) for j in range(num_samples)]
        flat = self._run(sequences, rows, temperature, top_k, top_p, stop_ids)
        return [flat[i * num_samples:(i + 1) * num_samples] for i in range(len(forks))]

    # -- one call: validate, group rows by sequence, run them in chunks of max_batch ------------

    @torch.inference_mode()  # no_grad, and no version counters or view tracking either
    def _run(self, seqs, rows: list[_Row], temperature, top_k, top_p, stop_ids) -> list[Completion]:
        if temperature < 0 or top_k < 0 or not 0 < top_p <= 1:
            raise ValueError(f"need temperature >= 0, top_k >= 0, 0 < top_p <= 1 "
                             f"(got {temperature}, {top_k}, {top_p})")
        for i, r in enumerate(rows):
            if not 1 <= r.prefix <= len(seqs[r.seq]):
                raise ValueError(f"row {i}: prefix length {r.prefix} not in "
                                 f"[1, {len(seqs[r.seq])}] (empty prompt?)")
            if r.max_new < 0 or r.prefix + r.max_new > self.max_len:
                raise ValueError(
                    f"row {i}: {r.prefix} prompt + {r.max_new} new tokens do not fit max_len "
                    f"{self.max_len} (the Sampler's limit, at most max_position_embeddings)")
        eos = self.model.config.eos_token_id  # int, list or None; read at each call
        self._reserve(max((r.prefix + r.max_new for r in rows), default=0))
        stop = sorted(({eos} if isinstance(eos, int) else set(eos or ())) | set(stop_ids))
        settings = (temperature, top_k, top_p, stop)
        out: list[Completion | None] = [
            Completion([], [], [], "length") if r.max_new == 0 else None for r in rows]
        todo = sorted((i for i, r in enumerate(rows) if r.max_new > 0), key=lambda i: rows[i].seq)
        for c in range(0, len(todo), self.max_batch):
            ids = todo[c:c + self.max_batch]
            for i, done in zip(ids, self._chunk(seqs, [rows[i] for i in ids], *settings)):
                out[i] = done
        return out

    def _chunk(self, seqs, rows: list[_Row], temperature, top_k, top_p, stop) -> list[Completion]:
        n, dev, st = len(rows), self.device, self.state
        used = list(dict.fromkeys(r.seq for r in rows))  # the sequences this chunk forks, in order
        slot = {s: i for i, s in enumerate(used)}
        length = [max(r.prefix for r in rows if r.seq == s) for s in used]
        logits = self._prefill([seqs[s][:L] for s, L in zip(used, length)],
                               [(slot[r.seq], r.prefix - 1) for r in rows])
        src = [slot[r.seq] for r in rows]
        if src != list(range(n)):  # fork: row i starts from its sequence's cache (past t: masked)
            self.cache.copy_rows(torch.tensor(src, device=dev), torch.arange(n, device=dev),
                                 max(length))

        b = self._bucket(n)
        T = max(r.max_new for r in rows)
        # "last": the index of a row's last allowed token; "row": which chunk row a slot holds
        init = dict(tok=[0] * n, pos=[r.prefix - 1 for r in rows], count=[0] * n,
                    key=[row_key(r.seed) for r in rows], top_k=[top_k] * n,
                    last=[r.max_new - 1 for r in rows], row=list(range(n)),
                    temp=[temperature] * n, top_p=[top_p] * n, done=[False] * n)
        pad = dict(row=n, done=True, top_p=1.0)  # slots n..b-1 fill the bucket: finished, no one's
        for k, v in init.items():
            st[k][:b] = torch.tensor(v + [pad.get(k, 0)] * (b - n), dtype=st[k].dtype, device=dev)
        self.flags = (temperature > 0, top_k > 0 or top_p < 1)  # what eager steps may skip
        self.stop = torch.tensor(stop, dtype=torch.long, device=dev)
        # outputs by slot: a live row has emitted one token per step, so step j writes column j
        # (a finished row's writes land past its end, and are cut at collect)
        self.out = (torch.zeros(b, T, dtype=torch.long, device=dev), torch.zeros(b, T, device=dev),
                    torch.zeros(b, T, device=dev))
        self.results = [None] * (n + 1)  # by row; n: the padding slots

        # the first token of every row comes from the prefill logits
        self._emit(n, 0, *sample(logits, st["temp"][:n], st["top_k"][:n], st["top_p"][:n],
                                 st["key"][:n], st["count"][:n], *self.flags))
        hi = max(r.prefix for r in rows)  # bounds the live rows' positions, exact after each check
        check = 8 if dev.type == "cuda" else 4  # reading the live count syncs with the GPU
        for step in range(1, T):
            if (step - 1) % check == 0:
                live = ~st["done"][:b]
                n_live, hi = torch.stack([live.sum(), (st["pos"][:b] * live).max()]).tolist()
                if n_live == 0:
                    break
                if self._bucket(n_live) < b:
                    b = self._compact(b, n_live, hi, set(stop))
            self._emit(b, step, *self._step(b, self._kv_len(hi + 1)))
            hi += 1
        self._collect(range(b), set(stop))
        return self.results[:n]

    # -- the pieces -------------------------------------------------------------------------------

    def _prefill(self, seqs: list[list[int]], want: list[tuple[int, int]]) -> torch.Tensor:
        """Write each sequence's k/v into cache row i (right-padded, positions 0..len-1); return the
        logits (len(want), V) at the wanted (row, position) pairs, the only ones the head sees."""
        S = max(len(s) for s in seqs)
        ids = torch.tensor([s + [0] * (S - len(s)) for s in seqs], device=self.device)
        rows = torch.tensor([r for r, _ in want], device=self.device)
        pos = torch.tensor([p for _, p in want], device=self.device)
        logits = torch.empty(len(want), self.model.config.vocab_size, device=self.device)
        per = max(1, self.prefill_tokens // S)
        for i in range(0, len(seqs), per):
            hidden = self.model(ids[i:i + per], cache=_cache_rows(self.cache, i, i + per), kv_len=S,
                                return_hidden=True)
            here = (rows >= i) & (rows < i + per)
            logits[here] = self.model.lm_head(hidden[rows[here] - i, pos[here]]).float()
        return logits

    def _decode(self, b: int, kv_len: int, stochastic=True, filtering=True):
        """One step for batch rows [0, b): feed each row's last token, sample the next one.
        The CUDA graphs capture this function: it reads only static tensors."""
        st = self.state
        logits = self.model(st["tok"][:b, None], st["pos"][:b, None], self.cache, kv_len)[:, 0]
        return sample(logits, st["temp"][:b], st["top_k"][:b], st["top_p"][:b], st["key"][:b],
                      st["count"][:b], stochastic, filtering)

    def _step(self, b: int, kv_len: int):
        if self.graphs is None:
            return self._decode(b, kv_len, *self.flags)
        if (b, kv_len) not in self.graphs:
            self.graphs[b, kv_len] = self._capture(b, kv_len)
        graph, outputs = self.graphs[b, kv_len]
        graph.replay()
        # no clone: _emit copies these, in stream order, before any replay can overwrite them
        return outputs

    def _capture(self, b: int, kv_len: int):
        """Capture _decode for one (batch, kv length) bucket. Warm-up on a side stream keeps lazy
        init (cuBLAS handles, workspaces) out of the capture. Both run mid-generation on the real
        state: harmless, a step rewrites the current tokens' k/v with the values a replay writes.
        All graphs share one memory pool (they never run concurrently; their outputs stay alive)."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._decode(b, kv_len)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            outputs = self._decode(b, kv_len)
        return graph, outputs

    def _emit(self, b: int, j: int, tokens, logprobs, sampling_logprobs):
        """Record the j-th tokens of slots [0, b) and advance the live rows (on device, no sync).
        A finished row rides along: its outputs are never read, its position and count stay put."""
        st = self.state
        for buf, val in zip(self.out, (tokens, logprobs, sampling_logprobs)):
            buf[:b, j] = val
        live = ~st["done"][:b]
        st["done"][:b] |= torch.isin(tokens, self.stop) | (st["count"][:b] >= st["last"][:b])
        st["tok"][:b] = tokens
        st["pos"][:b] += live
        st["count"][:b] += live  # for a finished row: its number of tokens

    def _compact(self, b: int, n_live: int, hi: int, stop: set[int]) -> int:
        """Pack the live rows (and their cache up to position hi) to the front and shrink the
        bucket; the finished rows that drop out of it are collected first."""
        nb = self._bucket(n_live)
        order = torch.argsort(self.state["done"][:b].to(torch.int8), stable=True)  # live first
        self._collect(order[nb:].tolist(), stop)
        order = order[:nb]
        self.cache.copy_rows(order[:n_live], torch.arange(n_live, device=self.device), hi + 1)
        for t in (*self.state.values(), *self.out):
            t[:nb] = t[order]  # slots n_live..nb-1: finished rows as padding, collected at the end
        return nb

    def _collect(self, slots, stop: set[int]):
        """Turn the outputs of these slots (finished rows) into their rows' Completions."""
        slots = torch.as_tensor(list(slots), dtype=torch.long, device=self.device)
        rows, counts = self.state["row"][slots].tolist(), self.state["count"][slots].tolist()
        tokens, lps, slps = (t[slots].tolist() for t in self.out)
        for r, k, tok, lp, slp in zip(rows, counts, tokens, lps, slps):
            reason = "stop" if tok[k - 1] in stop else "length"
            self.results[r] = Completion(tok[:k], lp[:k], slp[:k], reason)

    def _reserve(self, length: int):
        """Make the cache at least `length` positions long (see the class docstring)."""
        if length <= self.cache_len:
            return
        if self.device.type == "cuda":
            length = min(self.max_len, max(256, 1 << (length - 1).bit_length()))
        if self.graphs:
            self.graphs.clear()  # they write into the old cache: drop them before it is freed
        p = next(self.model.parameters())
        self.cache = None
        self.cache = KVCache(self.model.config, self.max_batch, length, p.dtype, p.device)
        self.cache_len = length

    def _bucket(self, n: int) -> int:
        return next(b for b in self.buckets if b >= n)

    def _kv_len(self, n: int) -> int:
        """Cache slots a step attends over: exactly n on CPU; on CUDA rounded up to a power of two
        (>= 256) so a few graphs cover a generation, eager too so both compute the same numbers."""
        if self.device.type == "cuda":
            n = max(256, 1 << (n - 1).bit_length())
        return min(n, self.cache_len)


def _per_row(value, n: int, name: str) -> list[int]:
    values = [value] * n if isinstance(value, int) else list(value)
    if len(values) != n:
        raise ValueError(f"{name}: {len(values)} values for {n} rows")
    return values


def _base_seed(seed: int | None) -> int:
    return int(torch.randint(0, 2**62, ())) if seed is None else seed


# -------------------------------------------------------------------------------------------------
# 4. One-call wrappers: a Sampler sized to the call. Hold a Sampler to reuse cache and graphs.


def generate(model: Transformer, prompts: list[list[int]], max_new_tokens: int | list[int],
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, stop_ids=(),
             seed: int | None = None, seeds: list[int] | None = None, max_batch: int = 64,
             cuda_graphs: bool | None = None) -> list[Completion]:
    """New tokens (and log-probs) for each prompt; temperature 0 is greedy. See Sampler.generate."""
    limits = _per_row(max_new_tokens, len(prompts), "max_new_tokens")
    length = max((len(p) + m for p, m in zip(prompts, limits)), default=1)
    sampler = Sampler(model, max(1, min(max_batch, len(prompts))), length, cuda_graphs)
    return sampler.generate(prompts, limits, temperature, top_k, top_p, stop_ids, seed, seeds)


def fork_generate(model: Transformer, sequences: list[list[int]], forks: list[tuple[int, int]],
                  max_new_tokens: int | list[int], num_samples: int = 1, temperature: float = 1.0,
                  top_k: int = 0, top_p: float = 1.0, stop_ids=(), seed: int | None = None,
                  seeds: list[int] | None = None, max_batch: int = 64,
                  cuda_graphs: bool | None = None) -> list[list[Completion]]:
    """For each fork (seq_index, prefix_len), num_samples completions of it. See Sampler.fork."""
    limits = _per_row(max_new_tokens, len(forks), "max_new_tokens")
    length = max((t + m for (_, t), m in zip(forks, limits)), default=1)
    sampler = Sampler(model, max(1, min(max_batch, len(forks) * num_samples)), length, cuda_graphs)
    return sampler.fork(sequences, forks, limits, num_samples, temperature, top_k, top_p, stop_ids,
                        seed, seeds)


def generate_from_prefixes(model: Transformer, sequence: list[int], prefix_lens: list[int],
                           num_samples: int, max_new_tokens: int | list[int],
                           **kwargs) -> list[list[Completion]]:
    """One sequence, prefilled once: num_samples completions per prefix length (best-of-N: one)."""
    return fork_generate(model, [sequence], [(0, t) for t in prefix_lens], max_new_tokens,
                         num_samples, **kwargs)
