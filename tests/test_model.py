"""model.py against transformers (the oracle), and its loading/saving contract."""
import json
from pathlib import Path

import pytest
import torch

from model import (CheckpointError, KVCache, ModelConfig, PRMHead, Tokenizer, Transformer, step_logits,
                   step_scores)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mistral-7b-v0.1"

TINY = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0,
            bos_token_id=1, eos_token_id=2)

CASES = {
    # name: (model_type, overrides, max_shard_size for HF save)
    "mistral-gqa-window": ("mistral", dict(sliding_window=7), None),
    "mistral-tied-sharded": ("mistral", dict(sliding_window=None, tie_word_embeddings=True), "40KB"),
    "mistral-head_dim": ("mistral", dict(sliding_window=5, head_dim=24, num_key_value_heads=1), None),
    "llama-untied": ("llama", dict(num_key_value_heads=4), None),
    "llama-tied-headdim-sharded": ("llama", dict(tie_word_embeddings=True, head_dim=8), "30KB"),
}


def hf_model(model_type, overrides, seed=0):
    transformers = pytest.importorskip("transformers")
    cls_cfg = transformers.MistralConfig if model_type == "mistral" else transformers.LlamaConfig
    cls = transformers.MistralForCausalLM if model_type == "mistral" else transformers.LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = cls_cfg(**{**TINY, **overrides}, attn_implementation="eager")
    m = cls(cfg).eval()
    with torch.no_grad():  # random norms too, so a wrong norm convention would show
        for n, p in m.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5)
    return m


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_transformers(name, tmp_path):
    model_type, overrides, shard = CASES[name]
    ref = hf_model(model_type, overrides)
    ref.save_pretrained(tmp_path, safe_serialization=True, **({"max_shard_size": shard} if shard else {}))
    if shard:
        assert (tmp_path / "model.safetensors.index.json").exists()
    ours = Transformer.from_pretrained(tmp_path)
    ids = torch.randint(3, TINY["vocab_size"], (3, 19), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ref(ids).logits
        got = ours(ids)
    delta = (got - want).abs().max().item()
    print(f"{name}: max |Δ logits| = {delta:.2e}")
    assert got.shape == (3, 19, TINY["vocab_size"])
    assert delta <= 1e-4


def test_save_load_round_trip_and_transformers_reads_ours(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = ModelConfig(**{**TINY, "sliding_window": 6})
    torch.manual_seed(3)
    ours = Transformer(cfg)
    ours.save_pretrained(tmp_path / "a")
    again = Transformer.from_pretrained(tmp_path / "a")
    for (k, p), (k2, p2) in zip(ours.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(p, p2), k
    ours.save_pretrained(tmp_path / "b", max_shard_bytes=30_000)  # sharded
    assert (tmp_path / "b" / "model.safetensors.index.json").exists()
    sharded = Transformer.from_pretrained(tmp_path / "b")
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), sharded.state_dict().values()))
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "b", attn_implementation="eager").eval()
    ids = torch.randint(0, TINY["vocab_size"], (2, 15))
    with torch.no_grad():
        delta = (hf(ids).logits - ours(ids)).abs().max().item()
    print(f"transformers reading our checkpoint: max |Δ logits| = {delta:.2e}")
    assert delta <= 1e-4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left behind


def test_save_over_existing_checkpoint_is_replaced_whole(tmp_path):
    torch.manual_seed(0)
    a, b = Transformer(ModelConfig(**TINY)), Transformer(ModelConfig(**TINY))
    a.save_pretrained(tmp_path / "ck", max_shard_bytes=30_000)
    b.save_pretrained(tmp_path / "ck")  # single file now: no stale shards may survive
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["config.json", "model.safetensors"]
    c = Transformer.from_pretrained(tmp_path / "ck")
    assert torch.equal(c.lm_head.weight, b.lm_head.weight)


def test_cached_forward_equals_plain_forward():
    """Right-padded ragged prefill into the cache, then one token per row: same logits as the full pass."""
    cfg = ModelConfig(**{**TINY, "sliding_window": 4})
    torch.manual_seed(0)
    m = Transformer(cfg).eval()
    seqs = [torch.randint(3, 97, (n,)).tolist() for n in (9, 5, 12)]
    cache = KVCache(cfg, max_batch=3, max_len=16)
    S = max(len(s) for s in seqs) - 1
    prompt = torch.tensor([s[:-1] + [0] * (S - len(s) + 1) for s in seqs])
    with torch.no_grad():
        m(prompt, cache=cache)
        last = torch.tensor([[s[-1]] for s in seqs])
        pos = torch.tensor([[len(s) - 1] for s in seqs])
        step = m(last, positions=pos, cache=cache)
        for b, s in enumerate(seqs):
            full = m(torch.tensor([s]))[0, -1]
            assert (step[b, 0] - full).abs().max() < 1e-5


def test_rope_parameters_and_unknown_type(tmp_path):
    d = {**TINY, "model_type": "mistral", "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}}
    assert ModelConfig.from_dict(d).rope_theta == 5e5
    with pytest.raises(ValueError, match="model_type 'gpt2' is not supported"):
        ModelConfig.from_dict({**TINY, "model_type": "gpt2"})
    (tmp_path / "config.json").write_text(json.dumps({**TINY, "model_type": "qwen2"}))
    with pytest.raises(ValueError, match="config.json: model_type 'qwen2'"):
        Transformer.from_pretrained(tmp_path)


def _saved(tmp_path):
    torch.manual_seed(0)
    m = Transformer(ModelConfig(**TINY))
    m.save_pretrained(tmp_path / "ck")
    return tmp_path / "ck"


def test_bad_checkpoints_fail_clearly(tmp_path):
    from safetensors.torch import load_file, save_file
    ck = _saved(tmp_path)
    sd = load_file(ck / "model.safetensors")
    w = sd.pop("model.layers.1.mlp.up_proj.weight")
    save_file(sd, ck / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing tensor 'model.layers.1.mlp.up_proj.weight' \(shape \(96, 64\)\)"):
        Transformer.from_pretrained(ck)
    sd["model.layers.1.mlp.up_proj.weight"] = w[:, :10].contiguous()
    save_file(sd, ck / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"'model.layers.1.mlp.up_proj.weight'.*shape \(96, 10\).*expects \(96, 64\)"):
        Transformer.from_pretrained(ck)
    sd["model.layers.1.mlp.up_proj.weight"] = w
    sd["model.layers.9.extra.weight"] = w.clone()
    save_file(sd, ck / "model.safetensors")
    with pytest.raises(CheckpointError, match="unexpected tensor 'model.layers.9.extra.weight'"):
        Transformer.from_pretrained(ck)
    (ck / "model.safetensors").unlink()
    (ck / "pytorch_model.bin").write_bytes(b"not to be unpickled")
    with pytest.raises(CheckpointError, match="never unpickles"):
        Transformer.from_pretrained(ck)
    with pytest.raises(FileNotFoundError):
        Transformer.from_pretrained(tmp_path / "does-not-exist")


def test_prm_head_reads_the_tag_position():
    """step_scores = softmax over [+, -] of the full LM-head logits AT each tag, computed directly."""
    torch.manual_seed(0)
    m = Transformer(ModelConfig(**TINY)).eval()
    head = PRMHead(tag=50, good_id=60, bad_id=61)
    ids = torch.tensor([[5, 7, 50, 9, 9, 50, 0, 0], [5, 50, 8, 8, 8, 8, 8, 50]])
    with torch.no_grad():
        logits = m(ids)
        scores = step_scores(m, ids, head)
        sl = step_logits(m, ids, head)
    assert torch.allclose(sl, logits[..., [60, 61]], atol=1e-5)
    for b, row in enumerate(scores):
        tags = (ids[b] == 50).nonzero().flatten().tolist()
        want = [torch.softmax(logits[b, t, [60, 61]], -1)[0].item() for t in tags]
        assert row == pytest.approx(want, abs=1e-6) and len(row) == 2


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/data/mistral-7b-v0.1 is absent")
def test_real_mistral_7b_index_and_tokenizer():
    cfg = ModelConfig.from_json(SHARED / "config.json")
    assert (cfg.rms_norm_eps, cfg.sliding_window, cfg.num_key_value_heads) == (1e-5, 4096, 8)
    with torch.device("meta"):
        m = Transformer(cfg)
    index = json.loads((SHARED / "model.safetensors.index.json").read_text())["weight_map"]
    expected = m.expected_shapes()
    assert set(index) == set(expected), set(index) ^ set(expected)
    assert m.num_params() == 7_241_732_096
    total = json.loads((SHARED / "model.safetensors.index.json").read_text())["metadata"]["total_size"]
    assert sum(2 * torch.Size(s).numel() for s in expected.values()) == total  # bf16: every shape is right
    tok = Tokenizer(SHARED)
    head = PRMHead.from_tokenizer(tok)
    assert (head.tag, head.good_id, head.bad_id) == ((12902,), 648, 387)
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (1, 2, True)
    ids = tok.encode("Q? Step 1: 2+2=4 ки\nStep 2: The answer is: 4 ки")
    assert ids[0] == 1 and ids.count(12902) == 2 and ids[-1] == 12902


def test_hub_download_follows_the_index(tmp_path, monkeypatch):
    """A hub repo that ships both consolidated and sharded weights: only config, tokenizer files and the shards the
    index names are fetched (huggingface_hub's hf_hub_download is replaced by a local stand-in)."""
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError
    torch.manual_seed(0)
    m = Transformer(ModelConfig(**TINY))
    repo = m.save_pretrained(tmp_path / "repo", max_shard_bytes=30_000)
    first = sorted(repo.glob("model-*.safetensors"))[0]
    (repo / "consolidated.safetensors").write_bytes(first.read_bytes())
    asked = []

    def fake_download(repo_id, filename, **kw):
        asked.append(filename)
        if not (repo / filename).exists():
            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        return str(repo / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    loaded = Transformer.from_pretrained("someone/tiny-mistral")
    shards = sorted(p.name for p in repo.glob("model-*.safetensors"))
    assert "consolidated.safetensors" not in asked and set(shards) <= set(asked)
    assert asked[0] == "config.json" and "model.safetensors" not in asked
    assert torch.equal(loaded.lm_head.weight, m.lm_head.weight)


def test_saved_config_has_one_truthful_dtype(tmp_path):
    """A config from newer transformers carries `dtype` (bfloat16 here) and a version: save_pretrained of fp32 tensors
    writes torch_dtype float32 and neither stale key, so transformers loads it in fp32 by default, same logits."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    ours = Transformer(ModelConfig(**TINY, extra={"dtype": "bfloat16", "transformers_version": "5.0.0"})).eval()
    ours.save_pretrained(tmp_path / "ck")
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert cfg["torch_dtype"] == "float32" and "dtype" not in cfg and "transformers_version" not in cfg
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ck", attn_implementation="eager").eval()
    assert {p.dtype for p in hf.parameters()} == {torch.float32}
    ids = torch.randint(0, TINY["vocab_size"], (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        delta = (hf(ids).logits - ours(ids)).abs().max().item()
    assert delta <= 1e-5
    ours.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")  # and bf16 tensors say bfloat16
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"
