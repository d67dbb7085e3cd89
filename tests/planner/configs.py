"""Random small configs per model_type, fed unchanged to transformers and to ftplan.

The same dict goes to `AutoConfig.for_model(model_type, **d)` and to
`planner.spec.spec_from_config`, so a default that ftplan gets wrong shows up as
a count mismatch. Knobs that change counts are drawn at random or left out.
"""

from __future__ import annotations

import random

EXACT_TYPES = ["llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2",
               "gemma3_text", "phi3", "olmo2", "starcoder2", "granite", "gpt2", "gpt_neox", "falcon",
               "deepseek_v3"]


def _maybe(rng: random.Random, d: dict, key: str, value) -> None:
    """Set `key` half the time, so the reader's default for a missing key is tested too."""
    if rng.random() < 0.5:
        d[key] = value


def random_config(model_type: str, seed: int, *, layers: int | None = None) -> dict:
    rng = random.Random(f"{model_type}-{seed}")
    heads = rng.choice([2, 4, 6, 8])
    kv = rng.choice([k for k in (1, 2, heads) if heads % k == 0])
    hd = rng.choice([8, 16, 24])
    hidden = heads * hd
    d: dict = {
        "model_type": model_type,
        "vocab_size": rng.randrange(96, 400),
        "num_hidden_layers": layers or rng.randrange(1, 4),
        "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
    }
    inter = rng.randrange(2, 6) * 16 + rng.choice([0, 8])
    if model_type == "gpt2":
        d.update(n_embd=hidden, n_head=heads, n_layer=d.pop("num_hidden_layers"), n_positions=rng.choice([64, 128]))
        _maybe(rng, d, "n_inner", inter)
        _maybe(rng, d, "tie_word_embeddings", rng.random() < 0.5)
        return d
    d.update(hidden_size=hidden, num_attention_heads=heads, intermediate_size=inter)
    if model_type == "gpt_neox":
        _maybe(rng, d, "attention_bias", rng.random() < 0.5)
        _maybe(rng, d, "use_parallel_residual", rng.random() < 0.5)
        _maybe(rng, d, "tie_word_embeddings", rng.random() < 0.5)
        _maybe(rng, d, "rotary_pct", 0.5)
        return d
    if model_type == "falcon":
        d.pop("intermediate_size")
        arch = rng.choice(["new", "mq", "mha"])
        d["new_decoder_architecture"] = arch == "new"
        d["multi_query"] = arch == "mq"
        if arch == "new":
            d["num_kv_heads"] = kv
            _maybe(rng, d, "num_ln_in_parallel_attn", rng.choice([1, 2]))
        _maybe(rng, d, "parallel_attn", rng.random() < 0.5)
        _maybe(rng, d, "bias", rng.random() < 0.5)
        _maybe(rng, d, "ffn_hidden_size", inter)
        _maybe(rng, d, "tie_word_embeddings", rng.random() < 0.5)
        return d
    d["num_key_value_heads"] = kv
    _maybe(rng, d, "tie_word_embeddings", rng.random() < 0.5)
    if model_type in ("llama", "mistral", "qwen3", "gemma", "gemma2", "gemma3_text", "granite", "olmo2",
                      "mixtral", "qwen3_moe", "qwen2"):
        if model_type in ("qwen3", "gemma", "gemma2", "gemma3_text"):
            d["head_dim"] = rng.choice([hd, hd + 8])  # their defaults (128, 256) are too big for tiny tests
        else:
            _maybe(rng, d, "head_dim", rng.choice([hd, hd + 8]))
    if model_type in ("llama", "qwen3", "gemma", "gemma2", "gemma3_text", "granite", "olmo2", "qwen3_moe"):
        _maybe(rng, d, "attention_bias", rng.random() < 0.5)
    if model_type in ("llama", "granite"):
        _maybe(rng, d, "mlp_bias", rng.random() < 0.5)
    if model_type == "starcoder2":
        _maybe(rng, d, "use_bias", rng.random() < 0.5)
    if model_type in ("gemma2", "gemma3_text"):
        d["sliding_window"] = 8
    if model_type == "mixtral":
        d["num_local_experts"] = rng.choice([2, 4])
        d["num_experts_per_tok"] = 2
    if model_type in ("qwen2_moe", "qwen3_moe"):
        d["num_experts"] = rng.choice([2, 4])
        d["num_experts_per_tok"] = 2
        d["moe_intermediate_size"] = rng.randrange(1, 4) * 16
        _maybe(rng, d, "decoder_sparse_step", rng.choice([1, 2]))
        _maybe(rng, d, "mlp_only_layers", [0])
        if model_type == "qwen2_moe":
            d["shared_expert_intermediate_size"] = rng.randrange(1, 4) * 16
            _maybe(rng, d, "qkv_bias", rng.random() < 0.5)
    if model_type == "deepseek_v3":
        d["num_key_value_heads"] = heads
        d.update(
            n_routed_experts=rng.choice([2, 4]), num_experts_per_tok=2, n_group=1, topk_group=1,
            moe_intermediate_size=rng.randrange(1, 4) * 16, kv_lora_rank=rng.choice([16, 32]),
            qk_rope_head_dim=8, qk_nope_head_dim=rng.choice([8, 16]), v_head_dim=rng.choice([8, 16]),
            first_k_dense_replace=rng.choice([0, 1]), n_shared_experts=rng.choice([1, 2]),
        )
        d["q_lora_rank"] = rng.choice([None, 24])
        _maybe(rng, d, "attention_bias", rng.random() < 0.5)
    return d
