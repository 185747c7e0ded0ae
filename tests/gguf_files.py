"""Writing a small Llama GGUF file in a test, so the import is checked without the 98 MB download.

The layout follows llama.cpp's conversion: its tensor names, the query and key rows reordered from
Hugging Face's rotary layout to interleaved pairs, and a byte-level BPE tokenizer as ``gpt2``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def rotary_to_interleaved(weight: np.ndarray, heads: int) -> np.ndarray:
    """Hugging Face keeps each head's rotary halves apart; GGUF interleaves them, as llama.cpp converts."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def gguf_name(hf_name: str) -> str:
    if hf_name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf_name == "model.norm.weight":
        return "output_norm.weight"
    if hf_name == "lm_head.weight":
        return "output.weight"
    _, _, layer, rest = hf_name.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{LAYER_NAMES[module]}.{kind}"


def write_llama_gguf(model: Any, tokenizer_dir: Path, path: Path, quantization: str = "F32") -> Path:
    """Write ``model`` (a ``LlamaForCausalLM``) and the byte-level BPE tokenizer saved in ``tokenizer_dir``;
    2D weights are stored as ``quantization`` (``F32`` or ``Q8_0``), norms always as F32."""
    import gguf

    config = model.config
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_name("hhalign test llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_vocab_size(config.vocab_size)

    spec = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    specials = {t["content"] for t in spec["added_tokens"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in specials else gguf.TokenType.NORMAL for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(config.eos_token_id)
    writer.add_pad_token_id(config.pad_token_id)

    kind = getattr(gguf.GGMLQuantizationType, quantization)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        weight = tensor.detach().float().numpy()
        if name.endswith("q_proj.weight"):
            weight = rotary_to_interleaved(weight, config.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            weight = rotary_to_interleaved(weight, config.num_key_value_heads)
        if weight.ndim == 2 and kind != gguf.GGMLQuantizationType.F32:
            writer.add_tensor(gguf_name(name), gguf.quants.quantize(weight, kind), raw_dtype=kind)
        else:
            writer.add_tensor(gguf_name(name), weight)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def dequantized(weight: np.ndarray, quantization: str) -> np.ndarray:
    """What a weight becomes after a round trip through ``quantization``."""
    import gguf

    kind = getattr(gguf.GGMLQuantizationType, quantization)
    return gguf.quants.dequantize(gguf.quants.quantize(weight, kind), kind)
