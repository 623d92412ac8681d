"""A Mistral/Llama transformer written out by hand; loads Hugging Face checkpoints as published.

  1. ModelConfig  - the config.json fields we need (model_type mistral or llama)
  2. layers       - RMSNorm, rotary embeddings (HF half-split), grouped-query attention with a
                    causal + sliding-window mask, SwiGLU MLP, the decoder block
  3. KVCache      - the preallocated cache that sampler.py drives (rows x positions)
  4. Transformer  - parameter names are exactly HF's: loading and saving are a state-dict assign
  5. Tokenizer    - tokenizer.json + tokenizer_config.json (BOS/EOS as transformers adds them)
  6. PRM head     - Math-Shepherd's step score: p(+) from the LM-head logits of '+'/'-' read AT the
                    step tag's last token (tag_positions: the one definition of where a PRM reads)

Every sequence is RIGHT-padded and carries absolute positions per row, so the causal mask alone
keeps real tokens from seeing padding. Nothing here samples; generation lives in sampler.py.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}  # --dtype, by name

# -------------------------------------------------------------------------------------------------
# 1. Config


class CheckpointError(ValueError):
    """A checkpoint that does not match the model: names the file, the key and both shapes."""


@dataclass
class ModelConfig:
    model_type: str = "mistral"
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    rms_norm_eps: float = 1e-5  # read from the file: transformers' default (1e-6) is not Mistral's
    rope_theta: float = 10000.0
    sliding_window: int | None = None  # None: full causal attention
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # some Llama variants put biases on q/k/v/o
    mlp_bias: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = None
    extra: dict = field(default_factory=dict)  # unused keys, written back by save_pretrained

    def __post_init__(self):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads={self.num_key_value_heads}")

    @classmethod
    def from_dict(cls, d: dict, source: str = "config.json") -> "ModelConfig":
        d = dict(d)
        mt = d.get("model_type")
        if mt not in ("mistral", "llama"):
            raise ValueError(f"{source}: model_type {mt!r} is not supported; "
                             f"expected 'mistral' or 'llama'")
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", None):
            raise ValueError(f"{source}: rope type {rope_type!r} is not supported "
                             f"(only plain rotary embeddings)")
        if "rope_theta" in rope:  # newer files keep theta in rope_parameters; that one is in force
            d["rope_theta"] = rope["rope_theta"]
        if d.get("hidden_act", "silu") != "silu":
            raise ValueError(f"{source}: hidden_act {d['hidden_act']!r} is not supported; "
                             f"expected 'silu'")
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        if mt == "llama" or not d.get("use_sliding_window", True):
            known["sliding_window"] = None  # Llama has none; Qwen-style files may switch it off
        for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads"):
            if k not in d:
                raise ValueError(f"{source}: missing required field {k!r}")
        known.setdefault("num_key_value_heads", d["num_attention_heads"])
        known.setdefault("rms_norm_eps", 1e-6 if mt == "llama" else 1e-5)
        return cls(**known, extra={k: v for k, v in d.items() if k not in names})

    @classmethod
    def from_json(cls, path: str | Path) -> "ModelConfig":
        with open(path) as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {e.lineno}: not valid JSON ({e.msg})") from None
        return cls.from_dict(d, source=str(path))

    def to_dict(self) -> dict:
        d = dict(self.extra)
        d.pop("rope_parameters", None)  # rope_theta goes at top level: every reader knows it
        d.pop("rope_scaling", None)
        d.update({f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"})
        d["architectures"] = ["MistralForCausalLM" if self.model_type == "mistral"
                              else "LlamaForCausalLM"]
        d["hidden_act"] = "silu"
        if self.model_type == "llama":
            d.pop("sliding_window")
        return d


# -------------------------------------------------------------------------------------------------
# 2. Layers


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # HF's order: normalise in fp32 (bf16 squares lose too much), cast back, then scale
        if x.dtype == self.weight.dtype == torch.float32:  # nothing to cast: fused, same bits
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        return self.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)


def rope_table(length: int, head_dim: int, theta: float,
               device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin (-sin, +sin) for positions 0..length-1, each (length, head_dim), in fp32.
    Half-split (HF's rotate_half): frequency k drives dims k and k + head_dim/2, so HF's q/k weights
    load unpermuted (the interleaved convention would run, and give wrong logits)."""
    even = torch.arange(0, head_dim, 2, device=device, dtype=torch.float32)
    inv_freq = 1.0 / (theta ** (even / head_dim))
    # angles: (length, head_dim/2)
    angles = torch.arange(length, device=device, dtype=torch.float32)[:, None] * inv_freq
    sin = angles.sin()
    return torch.cat([angles, angles], -1).cos(), torch.cat([-sin, sin], -1)


def apply_rope(x, cos, sin):
    """x (B, H, S, D). Rotates each pair (x_k, x_{k+D/2}) by its angle a to
    (x_k cos a - x_{k+D/2} sin a, x_{k+D/2} cos a + x_k sin a) = x * cos + roll(x, D/2) * sin."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, -1), sin)


def attention_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None):
    """Boolean (B, 1, Sq, Sk): a query at position p sees keys at positions p - window < j <= p.
    q_pos (B, Sq); k_pos (B, Sk), or (Sk,) when every row's keys share positions (cache slots)."""
    diff = q_pos[:, :, None] - k_pos[..., None, :]
    ok = diff >= 0
    if window is not None:
        ok = ok & (diff < window)
    return ok[:, None]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        h, d = cfg.hidden_size, cfg.head_dim
        nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.q_proj = nn.Linear(h, nh * d, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(h, nkv * d, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(h, nkv * d, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(nh * d, h, bias=cfg.attention_bias)

    def forward(self, x, cos, sin, positions, mask, cache_k=None, cache_v=None, kv_len=None):
        """mask: boolean (B, 1, S, keys) from Transformer.forward, or None for plain causal."""
        B, S, _ = x.shape
        c = self.cfg
        q = self.q_proj(x).view(B, S, c.num_attention_heads, c.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, S, c.num_key_value_heads, c.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, S, c.num_key_value_heads, c.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache_k is not None:  # write this step's k/v at their positions, attend over [0, kv_len)
            idx = positions[:, None, :, None].expand(B, c.num_key_value_heads, S, c.head_dim)
            cache_k[:B].scatter_(2, idx, k.to(cache_k.dtype))  # under autocast k/v may be bf16
            cache_v[:B].scatter_(2, idx, v.to(cache_v.dtype))
            k, v = cache_k[:B, :, :kv_len], cache_v[:B, :, :kv_len]
        # grouped-query attention: enable_gqa shares k/v heads without HF's repeat_kv copies
        gqa = c.num_key_value_heads != c.num_attention_heads
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                           enable_gqa=gqa)
        return self.o_proj(y.transpose(1, 2).reshape(B, S, -1))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h, i, b = cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias
        self.gate_proj, self.up_proj, self.down_proj = (
            nn.Linear(h, i, bias=b), nn.Linear(h, i, bias=b), nn.Linear(i, h, bias=b))

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # SwiGLU


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, positions, mask, cache_k=None, cache_v=None, kv_len=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, positions, mask,
                               cache_k, cache_v, kv_len)
        return x + self.mlp(self.post_attention_layernorm(x))


# -------------------------------------------------------------------------------------------------
# 3. The KV cache that sampler.py drives


class KVCache:
    """Preallocated keys/values, one (rows, kv_heads, max_len, head_dim) pair per layer.

    Batch row b is cache row b; slot j holds the row's token at position j. Slots past a row's
    position may be stale: causality masks them. Allocated once (static addresses, so a CUDA graph
    can capture the decode step)."""

    def __init__(self, cfg: ModelConfig, max_batch: int, max_len: int, dtype=torch.float32,
                 device="cpu"):
        shape = (max_batch, cfg.num_key_value_heads, max_len, cfg.head_dim)
        layers = range(cfg.num_hidden_layers)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in layers]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in layers]
        self.max_batch, self.max_len = max_batch, max_len

    def copy_rows(self, src: torch.Tensor, dst: torch.Tensor, length: int):
        """Prefix forking: rows dst start from the first `length` cached positions of rows src."""
        for k, v in zip(self.k, self.v):
            k[dst, :, :length] = k[src, :, :length]
            v[dst, :, :length] = v[src, :, :length]


# -------------------------------------------------------------------------------------------------
# 4. The model


class Decoder(nn.Module):  # Hugging Face's "model." prefix: embeddings, layers, final norm
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = Decoder(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.source_dir: str | None = None  # from_pretrained's folder (save copies its tokenizer)
        self._rope: dict = {}  # (device, dtype) -> rope_table, built at first use (not a buffer)

    def rope(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """rope_table up to max_position_embeddings (or x's length), in x's dtype and device:
        computed in fp32 once, then cast, as HF casts cos/sin to the activations' dtype."""
        key, cfg = (x.device, x.dtype), self.config
        if key not in self._rope or self._rope[key][0].shape[0] < x.shape[1]:
            length = max(cfg.max_position_embeddings, x.shape[1])
            self._rope[key] = tuple(
                t.to(x.dtype) for t in rope_table(length, cfg.head_dim, cfg.rope_theta, x.device))
        return self._rope[key]

    def forward(self, input_ids, positions=None, cache: KVCache | None = None,
                kv_len: int | None = None, return_hidden: bool = False, segments=None):
        """input_ids (B, S) -> logits (B, S, vocab), or final hidden states (B, S, hidden).
        positions (B, S): absolute position per token (default 0..S-1). With a cache, k/v go into
        cache rows 0..B-1 at those positions and attention spans slots [0, kv_len).
        segments (B, S): a sequence id per token of packed rows (positions restarting at 0 in each
        sequence); attention then stays within a sequence."""
        B, S = input_ids.shape
        window, dev = self.config.sliding_window, input_ids.device
        plain = positions is None and segments is None and window is None
        if positions is None:
            positions = torch.arange(S, device=dev).expand(B, S)
        if cache is not None:
            kv_len = kv_len or cache.k[0].shape[2]
            # every query position is < kv_len, so a window >= kv_len cuts nothing: skip its test
            window = window if window and window < kv_len else None
            mask = attention_mask(positions, torch.arange(kv_len, device=dev), window)
        elif plain:
            mask = None  # SDPA's fused causal kernel
        else:
            mask = attention_mask(positions, positions, window)
            if segments is not None:
                mask = mask & (segments[:, :, None] == segments[:, None, :])[:, None]
        x = self.model.embed_tokens(input_ids)
        cos, sin = (t[positions][:, None] for t in self.rope(x))  # (B, 1, S, head_dim)
        for i, layer in enumerate(self.model.layers):
            ck, cv = (cache.k[i], cache.v[i]) if cache is not None else (None, None)
            x = layer(x, cos, sin, positions, mask, ck, cv, kv_len)
        x = self.model.norm(x)
        return x if return_hidden else self.lm_head(x)

    def untie(self):
        """Give a tied LM head its own copy of the embedding (saved as lm_head.weight from now)."""
        if self.config.tie_word_embeddings:
            self.lm_head.weight = nn.Parameter(self.model.embed_tokens.weight.detach().clone())
            self.config.tie_word_embeddings = False
        return self

    def init_token_rows(self, ids: list[int]):
        """Rows for newly added tokens: the embedding (and an untied LM head) grow to cover `ids`,
        each new row starting at the mean of the existing rows (neutral, as in transformers)."""
        old = self.config.vocab_size
        n = max(old, max(ids) + 1)
        fresh = sorted(set(ids))

        def grown(w: torch.Tensor) -> nn.Parameter:
            w = w.detach()
            keep = [i for i in range(old) if i not in fresh]
            out = torch.cat([w, w.new_empty(n - old, w.shape[1])])
            out[fresh] = w[keep].mean(0)
            return nn.Parameter(out)
        self.model.embed_tokens.weight = grown(self.model.embed_tokens.weight)
        self.model.embed_tokens.num_embeddings = n
        self.lm_head.weight = (self.model.embed_tokens.weight if self.config.tie_word_embeddings
                               else grown(self.lm_head.weight))
        self.lm_head.out_features = self.config.vocab_size = n
        return self

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # a tied matrix is counted once

    # -- loading ----------------------------------------------------------------------------------

    def expected_shapes(self) -> dict[str, tuple]:
        """Every tensor a checkpoint must hold, with its shape (a tied head is the embedding)."""
        shapes = {k: tuple(p.shape) for k, p in self.named_parameters(remove_duplicate=False)}
        if self.config.tie_word_embeddings:
            shapes.pop("lm_head.weight")
        return shapes

    @classmethod
    def from_pretrained(cls, path_or_repo: str | Path, dtype=torch.float32, device="cpu",
                        check_only: bool = False) -> "Transformer":
        """A local folder or a Hugging Face repo id; single-file or sharded safetensors, no pickles.

        Built on the meta device and assigned tensor by tensor, converted to dtype/device, so the
        weights never sit twice in memory. Strict: a missing, unexpected or misshaped tensor is an
        error naming the key and both shapes. check_only: every check, no tensor read (on meta)."""
        folder = resolve_checkpoint(path_or_repo)
        cfg = ModelConfig.from_json(folder / "config.json")
        with torch.device("meta"):
            model = cls(cfg)
        files = safetensors_files(folder)
        expected = model.expected_shapes()
        state, seen, problems = {}, set(), []
        from safetensors import safe_open
        for file in files:
            with safe_open(str(file), framework="pt", device="cpu") as f:
                for key in f.keys():
                    if key not in expected:
                        if key == "lm_head.weight" and cfg.tie_word_embeddings:
                            continue  # some tied checkpoints store the head anyway
                        problems.append(f"unexpected tensor {key!r} in {file.name}")
                        continue
                    seen.add(key)
                    shape = tuple(f.get_slice(key).get_shape())
                    if shape != expected[key]:
                        problems.append(f"tensor {key!r} in {file.name} has shape {shape}, "
                                        f"the model expects {expected[key]}")
                        continue
                    if not check_only:
                        state[key] = f.get_tensor(key).to(device=device, dtype=dtype)
        problems += [f"missing tensor {k!r} (shape {s})" for k, s in expected.items()
                     if k not in seen]
        if problems:
            raise CheckpointError(
                f"{folder}: checkpoint does not match the model:\n  " + "\n  ".join(problems))
        model.source_dir = str(folder)
        if check_only:
            return model
        model.load_state_dict(state, strict=False, assign=True)
        if cfg.tie_word_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight
        return model.eval()

    # -- saving -----------------------------------------------------------------------------------

    def save_pretrained(self, path: str | Path, tokenizer_dir: str | Path | None = None,
                        max_shard_bytes: int = 5 * 2**30,
                        extra_files: dict[str, bytes] | None = None):
        """Hugging Face layout: config.json, model.safetensors (or shards + index past
        max_shard_bytes), tokenizer files and extra_files (e.g. a trainer state). Written to a temp
        folder beside `path`, then renamed in: a crash leaves no half checkpoint."""
        from safetensors.torch import save_file
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        try:
            keys = self.expected_shapes()
            params = dict(self.named_parameters(remove_duplicate=False))
            tensors = {k: params[k].detach().to("cpu").contiguous() for k in keys}
            shards, size = [[]], 0
            for k, t in tensors.items():
                nbytes = t.numel() * t.element_size()
                if shards[-1] and size + nbytes > max_shard_bytes:
                    shards.append([])
                    size = 0
                shards[-1].append(k)
                size += nbytes
            if len(shards) == 1:
                save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            else:
                weight_map = {}
                for i, names in enumerate(shards):
                    name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                    save_file({k: tensors[k] for k in names}, str(tmp / name),
                              metadata={"format": "pt"})
                    weight_map.update({k: name for k in names})
                total = sum(t.numel() * t.element_size() for t in tensors.values())
                write_json(tmp / "model.safetensors.index.json",
                           {"metadata": {"total_size": total}, "weight_map": weight_map})
            cfg = self.config.to_dict()
            # one dtype, the tensors': a carried-over `dtype` (read first by newer transformers)
            # would load a bf16-sourced fp32 checkpoint as bf16
            for stale in ("dtype", "transformers_version"):
                cfg.pop(stale, None)
            cfg["torch_dtype"] = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
            write_json(tmp / "config.json", cfg)
            src = tokenizer_dir or self.source_dir
            if src is not None:
                for name in TOKENIZER_FILES:
                    if (Path(src) / name).exists():
                        shutil.copy(Path(src) / name, tmp / name)
            for name, data in (extra_files or {}).items():
                (tmp / name).write_bytes(data)
            for f in tmp.iterdir():
                os.chmod(f, 0o644)
            os.chmod(tmp, 0o755)
            swap_in(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return path


def swap_in(tmp: Path, path: Path):
    """Put the finished folder `tmp` at `path` by renames (old out, new in, old removed), so a
    crash never leaves a half-written folder at `path`."""
    if path.exists():
        old = path.parent / f".{path.name}.old-{os.getpid()}"
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old)
    else:
        os.replace(tmp, path)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "generation_config.json")


def write_json(path: Path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def resolve_checkpoint(path_or_repo: str | Path) -> Path:
    """A local folder as is; else a hub repo id, fetched with huggingface_hub (honours
    HF_HUB_OFFLINE and its cache). Only config, tokenizer and the safetensors the index names are
    fetched, so a repo with both consolidated and sharded weights is not fetched twice."""
    p = Path(path_or_repo)
    if p.is_dir():
        return p
    if p.exists() or str(path_or_repo).startswith((".", "/")) or str(path_or_repo).count("/") != 1:
        raise FileNotFoundError(
            f"{path_or_repo}: not a checkpoint folder (and not a hub repo id like 'org/name')")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    repo = str(path_or_repo)
    offline = lambda what: FileNotFoundError(  # noqa
        f"{repo}: {what} is not in the local hub cache, and the hub cannot "
        f"be reached (HF_HUB_OFFLINE=1, or no network)")
    get = lambda name: Path(hf_hub_download(repo, name))  # noqa: E731
    try:
        folder = get("config.json").parent
    except LocalEntryNotFoundError:
        raise offline("config.json") from None
    for name in TOKENIZER_FILES:
        try:
            get(name)
        except EntryNotFoundError:  # not in the repo (or offline: the checks below say)
            pass
    try:
        index = json.loads(get("model.safetensors.index.json").read_text())
    except EntryNotFoundError:  # one consolidated file instead
        try:
            get("model.safetensors")
        except LocalEntryNotFoundError:
            raise offline("model.safetensors (or model.safetensors.index.json)") from None
        except EntryNotFoundError:
            raise FileNotFoundError(
                f"{repo}: no safetensors weights on the hub (pickled .bin files are refused)") \
                from None
        return folder
    for name in sorted(set(index["weight_map"].values())):
        try:
            get(name)
        except LocalEntryNotFoundError:
            raise offline(f"shard {name}") from None
    return folder


def safetensors_files(folder: Path) -> list[Path]:
    """A checkpoint's weight files: those the index names, else model.safetensors. No pickles."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [n for n in names if not (folder / n).exists()]
        if missing:
            raise CheckpointError(f"{index}: names shard(s) {missing} that are not in {folder}")
        return [folder / n for n in names]
    if (folder / "model.safetensors").exists():
        return [folder / "model.safetensors"]
    pickles = sorted(p.name for p in folder.iterdir()
                     if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    if pickles:
        raise CheckpointError(f"{folder}: only pickled weights ({', '.join(pickles)}); "
                              "Shepherd never unpickles. Convert them to safetensors first.")
    raise CheckpointError(f"{folder}: no model.safetensors or model.safetensors.index.json")


# -------------------------------------------------------------------------------------------------
# 5. Tokenizer


class Tokenizer:
    """tokenizer.json through the `tokenizers` library, encoding exactly as AutoTokenizer does."""

    def __init__(self, folder: str | Path):
        from tokenizers import Tokenizer as HFTokenizer
        self.folder = folder = Path(folder)
        self.tok = HFTokenizer.from_file(str(folder / "tokenizer.json"))
        conf = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the latter wins
            if (folder / name).exists():
                conf.update(json.loads((folder / name).read_text()))
        content = lambda t: t["content"] if isinstance(t, dict) else t  # noqa: E731
        tid = lambda key: (  # noqa: E731
            None if conf.get(key) is None else self.tok.token_to_id(content(conf[key])))
        self.bos_id, self.eos_id, self.pad_id = tid("bos_token"), tid("eos_token"), tid("pad_token")
        # BOS/EOS are the post-processor's alone, as in transformers 5.x: a BOS the checkpoint's own
        # tokenizer does not add (SmolLM2's) shifts every PRM position. Read them off a probe.
        core, full = self.tok.encode("1", add_special_tokens=False).ids, self.tok.encode("1").ids
        i = next(i for i in range(len(full) - len(core) + 1) if full[i:i + len(core)] == core)
        self.prefix, self.suffix = full[:i], full[i + len(core):]
        self.vocab_size = self.tok.get_vocab_size()

    @property
    def add_bos(self) -> bool:
        return bool(self.prefix)

    def encode(self, text: str, bos: bool = True, eos: bool = True) -> list[int]:
        """AutoTokenizer(text).input_ids; bos / eos False drop what goes before / after the text."""
        ids = self.tok.encode(text, add_special_tokens=False).ids
        return (self.prefix if bos else []) + ids + (self.suffix if eos else [])

    def decode(self, ids) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def tag_tokens(self, text: str) -> tuple[int, ...]:
        """The ids of `text` after a space inside a solution ('... = 7 ки'), one token or several:
        'ки' is (12902,) with Mistral's tokenizer, (31338, 7872) with SmolLM2's byte-level BPE."""
        base = self.tok.encode("1", add_special_tokens=False).ids
        ids = self.tok.encode(f"1 {text}", add_special_tokens=False).ids
        if not text.strip() or ids[:len(base)] != base or len(ids) == len(base):
            raise ValueError(f"{text!r} after a space does not tokenize on its own: "
                             f"{ids} after {base}")
        return tuple(ids[len(base):])

    def add_token(self, text: str) -> int:
        """Make ' ' + text one token of its own and return its id. Not 'special', so decode keeps
        it (split_steps reads it)."""
        from tokenizers import AddedToken
        self.tok.add_tokens([AddedToken(" " + text, normalized=False)])
        self.vocab_size = self.tok.get_vocab_size()
        return self.tok.token_to_id(" " + text)

    def save(self, folder: str | Path) -> Path:
        """tokenizer.json (with any added token) and the source folder's other tokenizer files."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.tok.save(str(folder / "tokenizer.json"))
        for name in TOKENIZER_FILES:
            if name != "tokenizer.json" and (self.folder / name).exists() and self.folder != folder:
                shutil.copy(self.folder / name, folder / name)
        return folder


# -------------------------------------------------------------------------------------------------
# 6. The PRM head (Math-Shepherd, as the released math-shepherd-mistral-7b-prm is used)


def tag_positions(ids, tag) -> list[int]:
    """THE positions a PRM reads: the LAST token (the first to see the whole tag) of every
    occurrence of the tag's token sequence in ids, a list of ints (left to right, no overlaps).
    Training, scoring, labeling and PPO all take positions from here: a PRM read even one
    position off from where it was trained still trains, and scores wrong."""
    tag = (tag,) if isinstance(tag, int) else tuple(tag)
    n, out, i = len(tag), [], len(tag) - 1
    while i < len(ids):
        if ids[i] == tag[-1] and tuple(ids[i - n + 1:i + 1]) == tag:
            out.append(i)
            i += n
        else:
            i += 1
    return out


def label_token(tok: Tokenizer, text: str) -> int:
    """The LM-head row meaning `text` ('+' or '-'); only its logit is read, so any single token
    will do: `text` after a space if that is one token (Mistral: ' +' 648, ' -' 387), else alone."""
    for ids in (tok.tag_tokens(text), tuple(tok.tok.encode(text, add_special_tokens=False).ids)):
        if len(ids) == 1:
            return ids[0]
    raise ValueError(f"{text!r}: expected a single token (after a space, or alone); got {ids}")


@dataclass(frozen=True)
class PRMHead:
    """The step tag ends every step; the PRM predicts '+' (the step can still reach the right
    answer) or '-' after it. Score of a step = p(+) = softmax over the LM-head logits of [+, -]
    read AT the tag's last token (tag_positions)."""
    tag: tuple[int, ...]  # the tag's token ids (an int is a one-token tag)
    good_id: int
    bad_id: int
    text: str = "ки"  # the tag as written (data.to_model_tag writes a file's " ки" as it)

    def __post_init__(self):
        tag = (self.tag,) if isinstance(self.tag, int) else tuple(self.tag)
        object.__setattr__(self, "tag", tag)

    @classmethod
    def from_tokenizer(cls, tok: Tokenizer, tag="ки", good="+", bad="-") -> "PRMHead":
        head = cls(tok.tag_tokens(tag), label_token(tok, good), label_token(tok, bad), tag)
        if head.good_id == head.bad_id:
            raise ValueError(f"{good!r} and {bad!r}: expected two different tokens; "
                             f"both are {head.good_id}")
        return head


def step_logits(model: Transformer, input_ids: torch.Tensor, head: PRMHead,
                with_hidden: bool = False, **forward_kw):
    """(B, S) -> (B, S, 2): the LM-head logits of [good, bad] at every position, in fp32 (and the
    final hidden states, with_hidden). Only those two LM-head rows are multiplied. The PRM loss and
    step_scores both read this."""
    hidden = model(input_ids, return_hidden=True, **forward_kw)  # model may be a DDP/FSDP wrapper
    w = getattr(model, "module", model).lm_head.weight[[head.good_id, head.bad_id]]
    logits = (hidden @ w.T).float()
    return (logits, hidden) if with_hidden else logits


def step_scores(model: Transformer, input_ids: torch.Tensor, head: PRMHead) -> list[list[float]]:
    """Every step's p(+) for a right-padded batch, one forward pass: a list per row, in step order.
    The padding id must not be a token of the tag."""
    p_good = step_logits(model, input_ids, head).softmax(-1)[..., 0]
    return [p_good[b, tag_positions(row, head.tag)].tolist()
            for b, row in enumerate(input_ids.tolist())]
