"""What the PEFT methods beyond plain LoRA add to a frozen model: their trainable tensors, exactly as peft
0.21 creates them (or, for `adapter`, as Houlsby et al. 2019 and the `adapters` library's DoubleSeqBnConfig
do), and the facts the activation replay needs.

* prefix (peft PrefixTuningConfig, P-Tuning v2): virtual keys and values for every layer, `num_virtual_tokens x
  layers x 2 x token_dim` (tuners/prefix_tuning/model.py, PrefixEncoder); `token_dim` is the KV width under
  grouped-query attention (utils/other.py `_prepare_prompt_learning_config`: head_dim x num_key_value_heads).
  With `prefix_projection` an embedding of token_dim feeds Linear(token_dim, H) - Tanh - Linear(H, layers x 2 x
  token_dim).
* prompt (PromptTuningConfig): `num_virtual_tokens x hidden` embeddings prepended to the input embeddings.
* ptuning (PromptEncoderConfig, P-Tuning v1): the same embedding reparametrised by an MLP (Linear(d, H), ReLU,
  Linear(H, H), ReLU, Linear(H, d)) or a 2-layer bidirectional LSTM(d, H) and an MLP head (Linear(2H, 2H), ReLU,
  Linear(2H, d)) (tuners/p_tuning/model.py, PromptEncoder).
* ia3 (IA3Config): one vector per target, `out_features` wide, or `in_features` for the feed-forward targets
  (tuners/ia3/layer.py `update_layer`); default targets per model type from peft's
  TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING / _FEEDFORWARD_MODULES_MAPPING (utils/constants.py).
* oft (OFTConfig): per target, `r` blocks of `b(b-1)/2` skew-symmetric entries, with r x b = in_features (peft
  adjusts a block size that does not divide in_features to the nearest divisor: tuners/oft/layer.py
  `adjust_oft_parameters`).
* DoRA (LoraConfig(use_dora=True)): LoRA plus one magnitude vector of `out_features` per target
  (tuners/lora/dora.py).
* adapter: after the attention and after the MLP of every layer, down (d -> d/R, bias), an activation, up
  (d/R -> d, bias), added to the sublayer's output.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.errors import FtplanError
from planner.params import target_names
from planner.plan import Plan
from planner.spec import Block, Linear, ModelSpec

# peft/utils/constants.py (peft 0.21): the families ftplan plans
IA3_TARGETS: dict[str, tuple[str, ...]] = {
    "gpt2": ("c_attn", "mlp.c_proj"), "gpt_neox": ("query_key_value", "dense_4h_to_h"),
    "falcon": ("query_key_value", "dense_4h_to_h"), "llama": ("k_proj", "v_proj", "down_proj"),
    "mistral": ("k_proj", "v_proj", "down_proj"), "mixtral": ("k_proj", "v_proj", "w2"),
    "phi": ("q_proj", "v_proj", "fc2"), "gemma": ("q_proj", "v_proj", "down_proj"),
    "gemma2": ("q_proj", "v_proj", "down_proj"), "gemma3_text": ("q_proj", "v_proj", "down_proj"),
    "qwen2": ("q_proj", "v_proj", "down_proj"), "qwen3": ("q_proj", "v_proj", "down_proj"),
}
IA3_FEEDFORWARD: dict[str, tuple[str, ...]] = {
    "gpt2": ("mlp.c_proj",), "gpt_neox": ("dense_4h_to_h",), "falcon": ("dense_4h_to_h",), "llama": ("down_proj",),
    "mistral": ("down_proj",), "mixtral": ("w2",), "phi": ("fc2",), "gemma": ("down_proj",),
    "gemma2": ("down_proj",), "gemma3_text": ("down_proj",), "qwen2": ("down_proj",), "qwen3": ("down_proj",),
}
LSTM_LAYERS = 2  # PromptEncoderConfig.encoder_num_layers


@dataclass(frozen=True)
class Tensors:
    """Trainable tensors by size: (numel, how many) pairs, and what they add up to."""

    sizes: tuple[tuple[int, int], ...]

    @property
    def params(self) -> int:
        return sum(n * c for n, c in self.sizes)


def _matches(path: str, names: tuple[str, ...] | list[str]) -> bool:
    """peft's suffix match of a module key against target names ("mlp.c_proj" matches only the MLP's c_proj)."""
    return any(path == n or path.endswith("." + n) for n in names)


def ia3_targets(spec: ModelSpec, block: Block, plan: Plan) -> list[tuple[Linear, bool]]:
    """The linears IA3 scales in `block`, each with whether it is a feed-forward target (scaled at its input)."""
    names = tuple(target_names(plan.ia3_target)) if plan.ia3_target else IA3_TARGETS.get(spec.model_type)
    if names is None:
        raise FtplanError(f"peft has no default IA3 target modules for {spec.model_type}; name them with "
                          f"{{ia3_target}} (e.g. {', '.join(sorted({lin.name for lin in block.linears}))})",
                          field="ia3_target")
    feedforward = IA3_FEEDFORWARD.get(spec.model_type, ())
    if plan.ia3_target and feedforward and not all(_matches(f, names) or f in names for f in feedforward):
        # IA3Config.__post_init__: "`feedforward_modules` should be a subset of `target_modules`"
        raise FtplanError(f"must include the feed-forward module{'s' if len(feedforward) > 1 else ''} "
                          f"{', '.join(feedforward)} for {spec.model_type} (peft's IA3 scales it at its input and "
                          "requires it among the targets)", field="ia3_target")
    return [(lin, _matches(lin.path, feedforward)) for lin in block.linears if _matches(lin.path, names)]


def oft_block(in_features: int, block_size: int, blocks: int) -> tuple[int, int]:
    """(blocks, block size) peft's OFT uses for a layer of `in_features` inputs, given either a block size or a
    number of blocks (the other 0)."""
    if blocks:
        blocks = _nearest_divisor(in_features, blocks)
        return blocks, in_features // blocks
    size = _nearest_divisor(in_features, block_size)
    return in_features // size, size


def _nearest_divisor(n: int, wanted: int) -> int:
    """peft's `adjust_oft_parameters`: `wanted` if it divides n, else the nearer divisor below or above it (the
    lower one on a tie), and n itself when `wanted` exceeds it."""
    if wanted >= n:
        return n
    higher = wanted
    while higher <= n and n % higher:
        higher += 1
    lower = wanted
    while lower > 1 and n % lower:
        lower -= 1
    return lower if wanted - lower <= higher - wanted else higher


def token_dim(spec: ModelSpec, plan: Plan) -> int:
    """peft's `token_dim`: the hidden size, or for prefix tuning the KV width of one layer."""
    if plan.method != "prefix":
        return spec.hidden_size
    att = spec.blocks[0].block.attention
    return att.num_kv_heads * att.head_dim


def encoder_width(spec: ModelSpec, plan: Plan) -> int:
    return plan.encoder_hidden_size or token_dim(spec, plan)


def prompt_tensors(spec: ModelSpec, plan: Plan) -> Tensors:
    """The prompt encoder's parameters (peft counts them all as trainable)."""
    n, d, h = plan.num_virtual_tokens, token_dim(spec, plan), encoder_width(spec, plan)
    if plan.method == "prompt":
        return Tensors(((n * d, 1),))
    if plan.method == "prefix":
        kv = spec.num_layers * 2 * d
        if not plan.prefix_projection:
            return Tensors(((n * kv, 1),))
        return Tensors(((n * d, 1), (h * d, 1), (h, 1), (kv * h, 1), (kv, 1)))
    if plan.encoder_type == "mlp":
        return Tensors(((n * d, 1), (h * d, 1), (h, 1), (h * h, 1), (h, 1), (d * h, 1), (d, 1)))
    lstm: list[tuple[int, int]] = []
    for layer in range(LSTM_LAYERS):  # per direction: weight_ih (4H, in), weight_hh (4H, H), two 4H biases
        width = d if layer == 0 else 2 * h
        lstm += [(4 * h * width, 2), (4 * h * h, 2), (4 * h, 4)]
    head = [(2 * h * 2 * h, 1), (2 * h, 1), (d * 2 * h, 1), (d, 1)]
    return Tensors(((n * d, 1), *lstm, *head))


def adapter_width(spec: ModelSpec, plan: Plan) -> int:
    return max(1, spec.hidden_size // plan.adapter_reduction)


def block_tensors(spec: ModelSpec, block: Block, plan: Plan, oft_targets: list[Linear]) -> list[tuple[int, int]]:
    """Trainable tensors one decoder block gets from ia3, oft (on `oft_targets`: LLaMA-Factory's oft_target
    resolves as lora_target does, planner.methods.lora_targets) or adapter."""
    if plan.method == "ia3":
        return [(lin.in_features if ff else lin.out_features, 1) for lin, ff in ia3_targets(spec, block, plan)]
    if plan.method == "oft":
        out = []
        for lin in oft_targets:
            blocks, size = oft_block(lin.in_features, plan.oft_block_size, plan.oft_blocks)
            out.append((blocks * (size * (size - 1) // 2), 1))
        return out
    if plan.method == "adapter":
        d, m = spec.hidden_size, adapter_width(spec, plan)
        return [(d * m, 2), (m, 2), (m * d, 2), (d, 2)]
    return []


def dora_magnitudes(linears: list[Linear]) -> int:
    """DoRA's `lora_magnitude_vector`: one entry per output feature of each target."""
    return sum(lin.out_features for lin in linears)


def check_supported(spec: ModelSpec, plan: Plan) -> None:
    """Refuse what peft itself refuses (or would run on a different model than planned)."""
    if plan.method == "prefix" and plan.gradient_checkpointing:
        # peft_model.py `_setup_prompt_encoder`: "prefix tuning now uses Cache but that won't work with gradient
        # checkpointing" (it raises when any module of the base model checkpoints)
        raise FtplanError("peft's prefix tuning does not run with gradient checkpointing; drop "
                          "{gradient_checkpointing}, or use prompt or ptuning", field="gradient_checkpointing")
    if plan.method == "prefix":
        kinds = {g.block.attention.kind for g in spec.blocks}
        widths = {(g.block.attention.num_kv_heads, g.block.attention.head_dim) for g in spec.blocks}
        if "mla" in kinds or len(widths) > 1:
            raise FtplanError(f"{spec.model_type} has layers of different key/value shapes (or latent attention); "
                              "peft provisions one prefix shape for every layer: use prompt or lora",
                              field="method")
    if plan.method == "ia3" and not any(ia3_targets(spec, g.block, plan) for g in spec.blocks):
        names = ", ".join(sorted({lin.name for g in spec.blocks for lin in g.block.linears}))
        raise FtplanError(f"{plan.ia3_target} matches no module of {spec.model_type}; use names from: {names}",
                          field="ia3_target")


def describe(spec: ModelSpec, plan: Plan) -> str:
    """The assumption line for the method: what peft builds, in the plan's numbers."""
    n = plan.num_virtual_tokens
    if plan.method == "prefix":
        how = (f"an embedding of {token_dim(spec, plan)} reparametrised by a {encoder_width(spec, plan)}-wide MLP"
               if plan.prefix_projection else "learned directly (P-Tuning v2)")
        return (f"prefix: {n} virtual keys and values in each of the {spec.num_layers} layers' attention, {how}; "
                f"attention runs over {n} + seq_len keys")
    if plan.method == "prompt":
        return f"prompt tuning: {n} trained embeddings prepended to every sequence (the model runs {n} + seq_len tokens)"
    if plan.method == "ptuning":
        kind = "2-layer bidirectional LSTM + MLP head" if plan.encoder_type == "lstm" else "3-layer MLP"
        return (f"P-Tuning: {n} virtual tokens from a {kind} ({encoder_width(spec, plan)} wide) prepended to every "
                f"sequence (the model runs {n} + seq_len tokens)")
    if plan.method == "ia3":
        names = plan.ia3_target or ", ".join(IA3_TARGETS.get(spec.model_type, ()))
        return (f"IA3: a learned vector scales the outputs of {names} (the feed-forward ones at their input; "
                "peft's defaults for the model type unless named)")
    if plan.method == "oft":
        size = f"{plan.oft_blocks} blocks per layer" if plan.oft_blocks else f"blocks of {plan.oft_block_size}"
        return (f"OFT: a block-diagonal orthogonal rotation ({size}, Cayley-Neumann) of each target's input on "
                f"{plan.lora_target}")
    return (f"adapter (Houlsby et al. 2019): a {spec.hidden_size} -> {adapter_width(spec, plan)} -> "
            f"{spec.hidden_size} bottleneck after the attention and after the MLP of every layer")


def model_seq_len(plan: Plan) -> int:
    """Tokens per sequence the model itself runs: prompt and P-tuning prepend their virtual tokens to the input
    (peft's PeftModelForCausalLM.forward concatenates them, and pads the labels with -100 over them)."""
    return plan.seq_len + (plan.num_virtual_tokens if plan.method in ("prompt", "ptuning") else 0)


def encoder_saved_bytes(spec: ModelSpec, plan: Plan, rows: int) -> int:
    """What the prompt encoder saves for backward in one forward over `rows` sequences (peft's get_prompt
    expands the virtual token ids to the batch, so each row runs the encoder): the embedding's int64 ids, and for
    the reparametrised encoders the inputs of their linears (fp32, as peft creates them) and activations."""
    if not plan.prompt_learning:
        return 0
    n = rows * plan.num_virtual_tokens
    d, h = token_dim(spec, plan), encoder_width(spec, plan)
    ids = 8 * n
    if plan.method == "prompt" or (plan.method == "prefix" and not plan.prefix_projection):
        return ids
    if plan.method == "prefix":  # embedding -> Linear (keeps its input) -> Tanh (keeps its output) -> Linear
        return ids + 4 * n * (d + h)
    if plan.encoder_type == "mlp":  # Linear, ReLU, Linear, ReLU, Linear: the linears' inputs (ReLU outputs)
        return ids + 4 * n * (d + 2 * h)
    # LSTM (2 layers, both directions, CPU/cuDNN alike keep each layer's input, its gates and cell states), then
    # the MLP head's inputs
    lstm = sum(4 * n * ((d if layer == 0 else 2 * h) + 2 * (4 * h + 2 * h)) for layer in range(LSTM_LAYERS))
    return ids + lstm + 4 * n * (2 * h + 2 * h)


def dora_transient(targets: list[Linear], rank: int, nbytes: int) -> int:
    """What DoRA's forward allocates for its largest target and frees again (peft tuners/lora/dora.py,
    DoraLinearLayer.forward): B @ A made by running the adapter on an in x in identity (`get_lora_weight`: the
    identity, A's output and the out x in product, kept until the module returns), the base weight cast to the
    input's dtype, and `get_weight_norm`'s scaled product and sum, all in the adapter's dtype (`nbytes` each)."""
    sizes = [lin.in_features * (lin.in_features + rank + 4 * lin.out_features) for lin in targets]
    return max(sizes, default=0) * nbytes
