"""Per-family readers: a config.json dict in, a `ModelSpec` out.

Each reader mirrors what `transformers` (5.x) builds for that `model_type`: the
same defaults for missing keys, the same module shapes and biases. The tests in
`tests/planner/test_params.py` prove it by building the model on the meta device
from the very same dict and comparing every parameter count.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from planner.errors import FtplanError, shown
from planner.modelspec import (
    MLP,
    PLAIN_MODULE,
    Attention,
    Block,
    BlockGroup,
    Linear,
    ModelSpec,
    Norm,
    Quantization,
)

_MISSING = object()

# Sanity limits, far above any published decoder (the deepest have ~130 layers, the widest ~25k hidden units, the
# largest vocabularies ~260k entries, the most experts 512, the longest contexts ~10M tokens): a value past one is a
# typo or a hostile file, not a model. The layer limit also bounds the run time, since the planner walks every
# layer (a 1e8-layer config used to run for minutes).
MAX_LAYERS = 1024
MAX_POSITIONS = 1 << 32
MAX_SIZE = 1 << 24  # any other width, head count, expert count or vocabulary
MAX_LIST = 1024  # entries of a list-valued key: mlp_only_layers, or modules_to_not_convert (matched per layer)
MAX_NAME = 256  # characters of a name-like value (model_type, hidden_act, architectures, ...)
_LIMITS = {"num_hidden_layers": MAX_LAYERS, "n_layer": MAX_LAYERS, "num_layers": MAX_LAYERS,
           "max_position_embeddings": MAX_POSITIONS, "n_positions": MAX_POSITIONS}


class ConfigReader:
    """Typed access to a config dict, one method per kind of value. Each checks the type and a sane range, so a bad
    value stops here as one line naming the file, the key, the value (shortened) and the fix: never a traceback
    deeper in the planner, nor a plan that runs for minutes."""

    def __init__(self, config: dict, source: str, *, prefix: str = "", model_type: str | None = None):
        self.config = config
        self.source = source
        self.prefix = prefix  # how a nested reader's keys are named: "quantization_config."
        self.model_type = model_type or self.str("model_type", "?")

    def has(self, key: str) -> bool:
        return self.config.get(key) is not None

    def key_of(self, *keys: str) -> str:
        """The first of `keys` the config sets (the first when none is): the one a message should name."""
        return next((k for k in keys if self.has(k)), keys[0])

    def _get(self, keys: tuple[str, ...]) -> tuple[str, Any]:
        key = self.key_of(*keys)
        return key, self.config[key] if self.has(key) else _MISSING

    def bad(self, key: str, expected: str, value: Any, *, described: str | None = None) -> FtplanError:
        """The one-line error for a value of the wrong type or range; `described` words a value too big to quote."""
        return FtplanError(f"{self.source}: key '{self.prefix}{key}' must be {expected}, got "
                           f"{described or shown(value)}; fix it in config.json")

    def int(self, *keys: str, default: Any = _MISSING, minimum: int = 1, maximum: int | None = None) -> int:
        key, value = self._get(keys)
        if value is _MISSING:
            if default is _MISSING:
                raise FtplanError(
                    f"{self.source}: missing key '{self.prefix}{keys[0]}' (needed for {self.model_type}); "
                    "add it to config.json or use a preset"
                )
            return default
        number = int(value) if isinstance(value, float) and value.is_integer() else value
        if isinstance(number, bool) or not isinstance(number, int):
            raise self.bad(key, "an integer", value)
        if number < minimum:
            raise self.bad(key, f"at least {minimum}", value)
        limit = maximum if maximum is not None else _LIMITS.get(key, MAX_SIZE)
        if number > limit:
            given = f"{number:,}" if isinstance(value, int) and number.bit_length() < 128 else shown(value)
            raise FtplanError(f"{self.source}: key '{self.prefix}{key}' is {given}, past ftplan's sanity limit of "
                              f"{limit:,} (no real model comes close); fix it in config.json")
        return number

    def float(self, key: str, default: float | None = None, *, minimum: float | None = None,
              maximum: float | None = None) -> float | None:
        value = self.config.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.bad(key, "a number", value)
        try:
            number = float(value)
        except OverflowError:  # an integer past 1e308
            number = math.inf
        if not math.isfinite(number):
            raise self.bad(key, "a finite number", value)
        if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
            span = (f"between {minimum:g} and {maximum:g}" if minimum is not None and maximum is not None
                    else f"at least {minimum:g}" if minimum is not None else f"at most {maximum:g}")
            raise self.bad(key, span, value)
        return number

    def fraction(self, key: str, default: float | None = 0.0) -> float | None:
        """A probability or share: dropouts, the rotary part of a head."""
        return self.float(key, default, minimum=0.0, maximum=1.0)

    def bool(self, key: str, default: bool) -> bool:
        value = self.config.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.bad(key, "true or false", value)
        return value

    def str(self, key: str, default: str, *, max_length: int = MAX_NAME) -> str:
        value = self.config.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.bad(key, "a string", value)
        if len(value) > max_length:
            raise self.bad(key, f"a name of at most {max_length} characters", value)
        return value

    def _list(self, key: str, what: str) -> list:
        value = self.config.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.bad(key, f"a list of {what}", value)
        if len(value) > MAX_LIST:
            raise self.bad(key, f"a list of at most {MAX_LIST:,} {what}", value, described=f"{len(value):,} of them")
        return value

    def str_list(self, key: str) -> tuple[str, ...]:
        items = self._list(key, "strings")
        for item in items:
            if not isinstance(item, str) or len(item) > MAX_NAME:
                raise self.bad(key, f"a list of strings of at most {MAX_NAME} characters", item)
        return tuple(items)

    def int_list(self, key: str, minimum: int = 0) -> tuple[int, ...]:
        items = self._list(key, "integers")
        for item in items:
            if isinstance(item, bool) or not isinstance(item, int) or not minimum <= item <= MAX_SIZE:
                raise self.bad(key, f"a list of integers from {minimum} to {MAX_SIZE:,}", item)
        return tuple(items)

    def sub(self, key: str) -> ConfigReader | None:
        """A reader for a nested object (quantization_config, rope_scaling); None when the key is not set."""
        value = self.config.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self.bad(key, "an object ({...})", value)
        return ConfigReader(value, self.source, prefix=f"{self.prefix}{key}.", model_type=self.model_type)


def _per_head(r: ConfigReader, d: int, heads: int, *, head_dim_key: bool = False) -> int:
    """hidden_size // heads: the head width of a config that gives no head_dim. More heads than hidden units would
    make it 0 (a ZeroDivisionError further on), which no model has."""
    if heads > d:
        fix = "fix it, or set head_dim, in config.json" if head_dim_key else "fix it in config.json"
        raise FtplanError(f"{r.source}: key '{r.key_of('num_attention_heads', 'n_head', 'num_heads')}' is {heads:,}, "
                          f"more than {r.key_of('hidden_size', 'n_embd', 'd_model')} {d:,} (each head would be 0 "
                          f"wide); {fix}")
    return d // heads


def _head_dim(r: ConfigReader, d: int, heads: int, default: int | None = None) -> int:
    """The config's head_dim, else the family's `default`, else hidden_size // heads."""
    if r.has("head_dim"):
        return r.int("head_dim")
    return default if default is not None else _per_head(r, d, heads, head_dim_key=True)


def _softcap(r: ConfigReader, key: str, default: float) -> float | None:
    """A tanh cap that the family applies unless the config sets it to null (Gemma-2)."""
    if key in r.config and r.config[key] is None:
        return None
    return r.float(key, default, minimum=0.0)


def _activation(name: str) -> str:
    name = name.lower()
    if name in ("silu", "swish"):
        return "silu"
    if name in ("gelu_pytorch_tanh", "gelu_python_tanh", "gelu_fast", "gelu_accurate"):
        return "gelu_tanh"
    if name == "gelu_new":
        return "gelu_new"
    if name == "relu":
        return "relu"
    return "gelu"


def _rope_fraction(r: ConfigReader, default: float = 1.0) -> float:
    for holder in (r.sub("rope_parameters"), r.sub("rope_scaling"), r):
        if holder is not None and holder.has("partial_rotary_factor"):
            return holder.fraction("partial_rotary_factor")
    return default


def _qkvo(prefix: str, d: int, heads: int, kv_heads: int, head_dim: int, qkv_bias: bool, o_bias: bool,
          v_head_dim: int | None = None) -> list[Linear]:
    v_head_dim = v_head_dim or head_dim
    return [
        Linear(path=f"{prefix}.q_proj", in_features=d, out_features=heads * head_dim, bias=qkv_bias),
        Linear(path=f"{prefix}.k_proj", in_features=d, out_features=kv_heads * head_dim, bias=qkv_bias),
        Linear(path=f"{prefix}.v_proj", in_features=d, out_features=kv_heads * v_head_dim, bias=qkv_bias),
        Linear(path=f"{prefix}.o_proj", in_features=heads * v_head_dim, out_features=d, bias=o_bias),
    ]


def _gated_mlp(prefix: str, d: int, inter: int, bias: bool, component: str = "mlp") -> list[Linear]:
    return [
        Linear(path=f"{prefix}.gate_proj", in_features=d, out_features=inter, bias=bias, component=component),
        Linear(path=f"{prefix}.up_proj", in_features=d, out_features=inter, bias=bias, component=component),
        Linear(path=f"{prefix}.down_proj", in_features=inter, out_features=d, bias=bias, component=component),
    ]


def _groups(blocks: list[Block]) -> tuple[BlockGroup, ...]:
    """Collapse runs of identical consecutive blocks: one BlockGroup per run, not one per layer, and the same
    object repeated (`[block] * layers`) compared by identity before pydantic's slower equality."""
    runs: list[list] = []  # [block, start, count]
    for i, block in enumerate(blocks):
        if runs and (runs[-1][0] is block or runs[-1][0] == block):
            runs[-1][2] += 1
        else:
            runs.append([block, i, 1])
    return tuple(BlockGroup(start=start, count=count, block=block) for block, start, count in runs)


# ------------------------------------------------------- pre-quantized checkpoints

_QUANT_METHODS = {"gptq": "gptq", "awq": "awq", "bitsandbytes": "bitsandbytes", "fp8": "fp8", "mxfp4": "mxfp4"}


def read_quantization(r: ConfigReader, moe: bool) -> tuple[Quantization | None, tuple[str, ...]]:
    """A checkpoint's `quantization_config` (transformers/utils/quantization_config.py): the stored format of
    its linear weights, and warnings saying what the plan does with it and where the estimate is off."""
    q = r.sub("quantization_config")
    if q is None or not q.config:
        return None, ()
    qc = q.config
    method = q.str("quant_method", "").lower().replace("-", "_")
    where = f"{r.source}: quantization_config"
    if method not in _QUANT_METHODS:
        return None, (f"{where}: quant_method {method or '?'!r} is not modelled; the base weights are counted in "
                      "the compute dtype, which overstates memory if they load quantized",)
    excluded = _excluded_modules(q)
    warnings: list[str] = []
    fields: dict[str, Any] = {"excluded": excluded, "dequantize": q.bool("dequantize", False)}
    if method in ("gptq", "awq"):
        bits = q.int("bits", "w_bit", default=4, maximum=32)
        group = q.int("group_size", "q_group_size", default=128, minimum=-1)
        fields.update(bits=bits, group_size=group if group > 0 else None,
                      zero_point=q.bool("zero_point", True) if method == "awq" else True)
        if qc.get("modules_in_block_to_quantize"):
            warnings.append(f"{where}: modules_in_block_to_quantize is not modelled; every block linear is "
                            "counted quantized, which understates memory if some are not")
        if qc.get("lm_head"):
            warnings.append(f"{where}: lm_head is quantized in this checkpoint; it is counted in the compute "
                            "dtype, which overstates memory")
        warnings.append(f"{method.upper()} kernels' dequantization workspaces are not modelled beyond one "
                        "dequantized weight at a time (as for QLoRA): the estimate may be slightly low")
    elif method == "bitsandbytes":
        four = q.bool("load_in_4bit", False) or q.bool("_load_in_4bit", False)
        fields.update(bits=4 if four else 8, double_quant=four and q.bool("bnb_4bit_use_double_quant", False))
    elif method == "fp8":
        block = q.int_list("weight_block_size", minimum=1)
        if block and len(block) != 2:
            raise q.bad("weight_block_size", "two integers [out, in]", qc["weight_block_size"])
        fields.update(bits=8, block_size=block or None,
                      static_activation_scale=qc.get("activation_scheme") == "static")
    else:  # mxfp4
        fields.update(bits=4)
    q = Quantization(method=_QUANT_METHODS[method], **fields)
    if q.dequantize:
        warnings.append(f"{where}: {q.label} with dequantize: true; transformers dequantizes the weights at "
                        "load, so the base is planned in the compute dtype")
    elif method == "mxfp4":
        warnings.append(f"{where}: {q.label}: transformers cannot train MXFP4 weights (its quantizer is not "
                        "trainable); fine-tuning recipes load with Mxfp4Config(dequantize=True), which this plan "
                        "assumes: the base is planned dequantized to the compute dtype")
    elif method == "fp8":
        warnings.append(f"{where}: {q.label}: LoRA plans keep the base weights in FP8 as stored (adapters on an "
                        "FP8 base); transformers dequantizes FP8 to bf16 at load on GPUs below compute capability "
                        "8.9 (A100, V100), where this understates memory; full and freeze fine-tuning are planned "
                        "dequantized (FineGrainedFP8Config(dequantize=True))")
    else:
        warnings.append(f"{where}: pre-quantized {q.label} checkpoint: LoRA plans keep the base linears as "
                        "stored, adapters on a quantized base (QLoRA-like, whatever quantization the plan asks "
                        "for: the checkpoint's wins); full and freeze fine-tuning are refused (transformers does "
                        "not train quantized weights without adapters)")
        if moe:
            warnings.append(f"{where}: MoE experts are counted in the compute dtype (transformers 5's fused expert "
                            f"tensors); if this {q.label} checkpoint's experts load quantized, it overstates memory")
    return q, tuple(warnings)


# Regex keys among a checkpoint's excluded modules, and repeats (*, +, {m,n}) in one: each regex is tried on every
# linear of every layer (up to ~10,000 names), and a run of repeats backtracks polynomially (a 40-character name
# against `.*.*.*x` takes 70 us, against `.*.*.*.*x` 0.8 ms), so these bound a plan's time. Real lists are module
# names plus a few regexes with one `.*`.
MAX_MODULE_REGEXES = 32
MAX_REPEATS = 2


def _excluded_modules(q: ConfigReader) -> tuple[str, ...]:
    """The modules a checkpoint keeps unquantized (modules_to_not_convert, ignored_layers, llm_int8_skip_modules),
    bounded in number and in the cost of matching them (see `Quantization.converts`)."""
    found = [(key, m) for key in ("modules_to_not_convert", "ignored_layers", "llm_int8_skip_modules")
             for m in q.str_list(key)]
    if len(found) > MAX_LIST:
        raise q.bad(found[0][0], f"at most {MAX_LIST:,} module names in all", found, described=f"{len(found):,}")
    regexes = [(key, m) for key, m in found if not PLAIN_MODULE.fullmatch(m)]
    if len(regexes) > MAX_MODULE_REGEXES:
        raise q.bad(regexes[0][0], f"module names with at most {MAX_MODULE_REGEXES} regexes among them",
                    regexes, described=f"{len(regexes)} regexes")
    for key, pattern in regexes:
        _check_module_regex(q, key, pattern)
    return tuple(m for _, m in found)


def _check_module_regex(q: ConfigReader, key: str, pattern: str) -> None:
    """Refuse a regex that can backtrack for hours: a repeat of a group that itself repeats or alternates
    (`(a+)+`, `(a|aa)*`), or more than MAX_REPEATS repeats in all."""
    frames = [False]  # per open group: whether it holds a repeat or an alternation
    repeats, i = 0, 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            i += 1
        elif char == "[":  # a character class: its metacharacters are literal
            i = pattern.find("]", i + 2)
            if i < 0:
                return  # not a valid regex: converts() skips it
        elif char == "(":
            frames.append(False)
        elif char == ")" and len(frames) > 1:
            inner = frames.pop()
            if inner and pattern[i + 1:i + 2] in ("*", "+", "{"):
                raise q.bad(key, "module names or simple regexes (a repeated group that itself repeats can take "
                            "hours to match)", pattern)
            frames[-1] = frames[-1] or inner
        elif char in "*+{|":
            frames[-1] = True
            repeats += char != "|"
        i += 1
    if repeats > MAX_REPEATS:
        raise q.bad(key, f"module names or simple regexes (at most {MAX_REPEATS} repeats such as .* in one: more "
                    "take minutes to match against every layer)", pattern)


def _spec(r: ConfigReader, name: str | None, blocks: list[Block], *, d: int, vocab: int, tie: bool,
          final_norm: Norm, warnings: tuple[str, ...] = (), **extra) -> ModelSpec:
    archs = r.str_list("architectures")
    quantization, quant_warnings = read_quantization(r, moe=any(b.mlp.kind == "moe" for b in blocks))
    return ModelSpec(
        name=name or r.str("_name_or_path", "", max_length=4096) or r.model_type,
        source=r.source,
        model_type=r.model_type,
        architecture=archs[0] if archs else r.model_type,
        vocab_size=vocab,
        hidden_size=d,
        num_layers=len(blocks),
        max_position_embeddings=r.int("max_position_embeddings", "n_positions", default=0, minimum=0) or None,
        tie_word_embeddings=tie,
        final_norm=final_norm,
        blocks=_groups(blocks),
        warnings=(*warnings, *quant_warnings),
        checkpoint_dtype=r.str("torch_dtype", "") or r.str("dtype", "") or None,
        quantization=quantization,
        **extra,
    )


# ------------------------------------------------------------ llama family


def _sliding_window(r: ConfigReader) -> int | None:
    if r.config.get("use_sliding_window") is False or r.config.get("sliding_window") is False:
        return None
    return r.int("sliding_window", default=0, minimum=0, maximum=MAX_POSITIONS) or None


def _read_llama_like(r: ConfigReader, name: str | None, *, family: str) -> ModelSpec:
    """llama, mistral, qwen2, qwen3, granite, gemma, gemma2, gemma3_text, olmo2, starcoder2, phi3."""
    d = r.int("hidden_size")
    layers = r.int("num_hidden_layers")
    heads = r.int("num_attention_heads")
    kv_heads = r.int("num_key_value_heads", default=heads)
    vocab = r.int("vocab_size")
    inter = r.int("intermediate_size")
    if family == "phi3":
        head_dim = _per_head(r, d, heads)  # Phi-3 ignores head_dim
    else:
        family_default = {"qwen3": 128, "gemma": 256, "gemma2": 256, "gemma3_text": 256}.get(family)
        head_dim = _head_dim(r, d, heads, family_default)
    attn_bias = r.bool("attention_bias", False)
    mlp_bias = r.bool("mlp_bias", False)
    tie_default = family in ("gemma", "gemma2", "gemma3_text", "starcoder2")
    tie = r.bool("tie_word_embeddings", tie_default)
    act = _activation(r.str("hidden_activation", "") or r.str("hidden_act", "silu"))
    norm = Norm(kind="rms")
    layout, num_norms, qk_norm = "pre", 2, "none"
    other: dict[str, int] = {}

    if family == "qwen2":
        linears = _qkvo("self_attn", d, heads, kv_heads, head_dim, qkv_bias=True, o_bias=False)
    elif family == "starcoder2":
        bias = r.bool("use_bias", True)
        linears = _qkvo("self_attn", d, heads, kv_heads, head_dim, qkv_bias=bias, o_bias=bias)
    elif family == "phi3":
        linears = [
            Linear(path="self_attn.qkv_proj", in_features=d, out_features=(heads + 2 * kv_heads) * head_dim),
            Linear(path="self_attn.o_proj", in_features=heads * head_dim, out_features=d),
        ]
    else:
        linears = _qkvo("self_attn", d, heads, kv_heads, head_dim, qkv_bias=attn_bias, o_bias=attn_bias)

    if family == "starcoder2":
        bias = r.bool("use_bias", True)
        mlp = MLP(kind="plain", activation=act, intermediate_size=inter)
        linears += [
            Linear(path="mlp.c_fc", in_features=d, out_features=inter, bias=bias, component="mlp"),
            Linear(path="mlp.c_proj", in_features=inter, out_features=d, bias=bias, component="mlp"),
        ]
        norm = Norm(kind="layer", bias=True)
    elif family == "phi3":
        mlp = MLP(kind="gated", activation=act, intermediate_size=inter)
        linears += [
            Linear(path="mlp.gate_up_proj", in_features=d, out_features=2 * inter, component="mlp"),
            Linear(path="mlp.down_proj", in_features=inter, out_features=d, component="mlp"),
        ]
    else:
        mlp = MLP(kind="gated", activation=act, intermediate_size=inter)
        linears += _gated_mlp("mlp", d, inter, mlp_bias)

    if family in ("gemma", "gemma2", "gemma3_text"):
        norm = Norm(kind="rms_gemma")
    if family in ("gemma2", "gemma3_text"):
        layout, num_norms = "sandwich", 4
    if family in ("qwen3", "gemma3_text"):
        qk_norm = "per_head"
        other["qk_norm"] = 2 * head_dim
    if family == "olmo2":
        layout, qk_norm = "post", "full"
        norm = Norm(kind="rms_olmo")
        other["qk_norm"] = heads * head_dim + kv_heads * head_dim
    other["norms"] = num_norms * d * (2 if norm.bias else 1)

    rope_dim = int(head_dim * _rope_fraction(r, 1.0))
    # Gemma-2 caps attention and final logits with tanh unless the config sets them to null
    softcap = _softcap(r, "attn_logit_softcapping", 50.0) if family == "gemma2" else None
    attention = Attention(
        kind="fused_qkv" if family == "phi3" else "standard",
        num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim, v_head_dim=head_dim,
        rope_dim=rope_dim, qk_norm=qk_norm, logit_softcap=softcap,
        sliding_window=_sliding_window(r), dropout=r.fraction("attention_dropout", 0.0),
        explicit_mask=family == "gemma3_text",
    )
    block = Block(layout=layout, norm=norm, num_norms=num_norms, attention=attention, mlp=mlp,
                  linears=tuple(linears), other_params=other,
                  residual_dropout=(r.fraction("residual_dropout") or r.fraction("resid_pdrop")))
    extra: dict[str, Any] = {}
    if family == "gemma2":
        extra["final_logit_softcap"] = _softcap(r, "final_logit_softcapping", 30.0)
        # modeling_gemma2.py: `_supports_sdpa = False` (SDPA cannot cap the attention logits)
        extra["sdpa"] = False
    if family in ("starcoder2", "phi3"):
        extra["embedding_dropout"] = r.fraction("embedding_dropout") or r.fraction("embd_pdrop")
    return _spec(r, name, [block] * layers, d=d, vocab=vocab, tie=tie, final_norm=norm, **extra)


# ------------------------------------------------------------------ MoE


def _read_mixtral(r: ConfigReader, name: str | None) -> ModelSpec:
    d = r.int("hidden_size")
    heads = r.int("num_attention_heads")
    kv_heads = r.int("num_key_value_heads", default=heads)
    head_dim = _head_dim(r, d, heads)
    inter = r.int("intermediate_size")
    experts = r.int("num_local_experts", "num_experts", default=8)
    top_k = r.int("num_experts_per_tok", default=2)
    linears = _qkvo("self_attn", d, heads, kv_heads, head_dim, qkv_bias=False, o_bias=False)
    block = Block(
        attention=Attention(num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim, v_head_dim=head_dim,
                            rope_dim=head_dim, sliding_window=_sliding_window(r),
                            dropout=r.fraction("attention_dropout", 0.0)),
        mlp=MLP(kind="moe", activation=_activation(r.str("hidden_act", "silu")), intermediate_size=inter,
                num_experts=experts, top_k=top_k),
        linears=tuple(linears),
        other_params={"norms": 2 * d, "router": experts * d, "experts": experts * 3 * inter * d},
    )
    return _spec(r, name, [block] * r.int("num_hidden_layers"), d=d, vocab=r.int("vocab_size"),
                 tie=r.bool("tie_word_embeddings", False), final_norm=Norm())


def _read_qwen_moe(r: ConfigReader, name: str | None, *, family: str) -> ModelSpec:
    d = r.int("hidden_size")
    heads = r.int("num_attention_heads")
    kv_heads = r.int("num_key_value_heads", default=heads)
    head_dim = _head_dim(r, d, heads)
    layers = r.int("num_hidden_layers")
    dense_inter = r.int("intermediate_size")
    expert_inter = r.int("moe_intermediate_size")
    experts = r.int("num_experts", "num_local_experts", default=60 if family == "qwen2_moe" else 128, minimum=0)
    top_k = r.int("num_experts_per_tok", default=4 if family == "qwen2_moe" else 8)
    step = r.int("decoder_sparse_step", default=1)
    mlp_only = set(r.int_list("mlp_only_layers"))
    act = _activation(r.str("hidden_act", "silu"))
    if family == "qwen2_moe":
        qkv_bias = r.bool("qkv_bias", True)
        attn = _qkvo("self_attn", d, heads, kv_heads, head_dim, qkv_bias=qkv_bias, o_bias=False)
        qk_norm, other_attn = "none", {}
        shared = r.int("shared_expert_intermediate_size", default=5632, minimum=0)
    else:
        bias = r.bool("attention_bias", False)
        attn = _qkvo("self_attn", d, heads, kv_heads, head_dim, qkv_bias=bias, o_bias=bias)
        qk_norm, other_attn = "per_head", {"qk_norm": 2 * head_dim}
        shared = 0
    attention = Attention(num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim, v_head_dim=head_dim,
                          rope_dim=head_dim, qk_norm=qk_norm, sliding_window=_sliding_window(r),
                          dropout=r.fraction("attention_dropout", 0.0))
    dense = Block(attention=attention, mlp=MLP(activation=act, intermediate_size=dense_inter),
                  linears=tuple(attn + _gated_mlp("mlp", d, dense_inter, False)),
                  other_params={**other_attn, "norms": 2 * d})
    moe_linears = list(attn)
    moe_other = {**other_attn, "norms": 2 * d, "router": experts * d, "experts": experts * 3 * expert_inter * d}
    if shared:
        moe_linears += _gated_mlp("mlp.shared_expert", d, shared, False, component="shared_expert")
        moe_linears.append(Linear(path="mlp.shared_expert_gate", in_features=d, out_features=1,
                                  component="shared_expert"))
    moe = Block(attention=attention,
                mlp=MLP(kind="moe", activation=act, intermediate_size=expert_inter, num_experts=experts,
                        top_k=top_k, shared_intermediate_size=shared, shared_expert_gate=bool(shared)),
                linears=tuple(moe_linears), other_params=moe_other)
    blocks = [
        moe if (i not in mlp_only and experts > 0 and (i + 1) % step == 0) else dense for i in range(layers)
    ]
    return _spec(r, name, blocks, d=d, vocab=r.int("vocab_size"), tie=r.bool("tie_word_embeddings", False),
                 final_norm=Norm())


def _read_deepseek_v3(r: ConfigReader, name: str | None) -> ModelSpec:
    d = r.int("hidden_size")
    heads = r.int("num_attention_heads")
    layers = r.int("num_hidden_layers")
    q_rank = r.config.get("q_lora_rank")
    kv_rank = r.int("kv_lora_rank")
    rope = r.int("qk_rope_head_dim")
    nope = r.int("qk_nope_head_dim")
    v_dim = r.int("v_head_dim")
    qk_dim = nope + rope
    bias = r.bool("attention_bias", False)
    act = _activation(r.str("hidden_act", "silu"))
    if q_rank:
        q_rank = r.int("q_lora_rank")
        attn = [
            Linear(path="self_attn.q_a_proj", in_features=d, out_features=q_rank, bias=bias),
            Linear(path="self_attn.q_b_proj", in_features=q_rank, out_features=heads * qk_dim),
        ]
        attn_other = {"qk_norm": q_rank + kv_rank}
    else:
        attn = [Linear(path="self_attn.q_proj", in_features=d, out_features=heads * qk_dim)]
        attn_other = {"qk_norm": kv_rank}
    attn += [
        Linear(path="self_attn.kv_a_proj_with_mqa", in_features=d, out_features=kv_rank + rope, bias=bias),
        Linear(path="self_attn.kv_b_proj", in_features=kv_rank, out_features=heads * (nope + v_dim)),
        Linear(path="self_attn.o_proj", in_features=heads * v_dim, out_features=d, bias=bias),
    ]
    attention = Attention(kind="mla", num_heads=heads, num_kv_heads=heads, head_dim=qk_dim, v_head_dim=v_dim,
                          rope_dim=rope, q_lora_rank=q_rank or None, kv_lora_rank=kv_rank,
                          dropout=r.fraction("attention_dropout", 0.0))
    dense_inter = r.int("intermediate_size")
    expert_inter = r.int("moe_intermediate_size")
    experts = r.int("n_routed_experts")
    shared = r.int("n_shared_experts", default=0, minimum=0) * expert_inter
    first_dense = r.int("first_k_dense_replace", default=0, minimum=0)
    dense = Block(attention=attention, mlp=MLP(activation=act, intermediate_size=dense_inter),
                  linears=tuple(attn + _gated_mlp("mlp", d, dense_inter, False)),
                  other_params={**attn_other, "norms": 2 * d})
    moe_linears = attn + (_gated_mlp("mlp.shared_experts", d, shared, False, component="shared_expert")
                          if shared else [])
    moe = Block(attention=attention,
                mlp=MLP(kind="moe", activation=act, intermediate_size=expert_inter, num_experts=experts,
                        top_k=r.int("num_experts_per_tok"), router="sigmoid", shared_intermediate_size=shared),
                linears=tuple(moe_linears),
                other_params={**attn_other, "norms": 2 * d, "router": experts * d,
                              "experts": experts * 3 * expert_inter * d})
    blocks = [dense if i < first_dense else moe for i in range(layers)]
    warnings = ()
    if r.config.get("num_nextn_predict_layers"):
        warnings = ("the multi-token-prediction layers (num_nextn_predict_layers) are not counted: "
                    "transformers does not build them for training",)
    return _spec(r, name, blocks, d=d, vocab=r.int("vocab_size"), tie=r.bool("tie_word_embeddings", False),
                 final_norm=Norm(), warnings=warnings)


# --------------------------------------------------------- GPT-style models


def _read_gpt2(r: ConfigReader, name: str | None) -> ModelSpec:
    d = r.int("n_embd", "hidden_size")
    heads = r.int("n_head", "num_attention_heads")
    inner = r.int("n_inner", default=4 * d)
    layers = r.int("n_layer", "num_hidden_layers")
    head_dim = _per_head(r, d, heads)
    linears = (
        Linear(path="attn.c_attn", in_features=d, out_features=3 * d, bias=True),
        Linear(path="attn.c_proj", in_features=d, out_features=d, bias=True),
        Linear(path="mlp.c_fc", in_features=d, out_features=inner, bias=True, component="mlp"),
        Linear(path="mlp.c_proj", in_features=inner, out_features=d, bias=True, component="mlp"),
    )
    block = Block(
        norm=Norm(kind="layer", bias=True),
        attention=Attention(kind="fused_qkv", num_heads=heads, num_kv_heads=heads, head_dim=head_dim,
                            v_head_dim=head_dim, rope_dim=0, dropout=r.fraction("attn_pdrop", 0.1),
                            softmax_fp32=False),
        mlp=MLP(kind="plain", activation=_activation(r.str("activation_function", "gelu_new")),
                intermediate_size=inner),
        linears=linears, other_params={"norms": 4 * d},
        residual_dropout=r.fraction("resid_pdrop", 0.1),
    )
    positions = r.int("n_positions", "max_position_embeddings", default=1024)
    return _spec(r, name, [block] * layers, d=d, vocab=r.int("vocab_size"),
                 tie=r.bool("tie_word_embeddings", True), final_norm=Norm(kind="layer", bias=True),
                 learned_positions=positions, embedding_dropout=r.fraction("embd_pdrop", 0.1))


def _read_gpt_neox(r: ConfigReader, name: str | None) -> ModelSpec:
    d = r.int("hidden_size")
    heads = r.int("num_attention_heads")
    inter = r.int("intermediate_size")
    bias = r.bool("attention_bias", True)
    head_dim = _per_head(r, d, heads)
    rotary = r.fraction("rotary_pct", None)
    rope_dim = int(head_dim * (_rope_fraction(r, 0.25) if rotary is None else rotary))
    linears = (
        Linear(path="attention.query_key_value", in_features=d, out_features=3 * d, bias=bias),
        Linear(path="attention.dense", in_features=d, out_features=d, bias=bias),
        Linear(path="mlp.dense_h_to_4h", in_features=d, out_features=inter, bias=True, component="mlp"),
        Linear(path="mlp.dense_4h_to_h", in_features=inter, out_features=d, bias=True, component="mlp"),
    )
    parallel = r.bool("use_parallel_residual", True)
    block = Block(
        layout="parallel" if parallel else "pre",
        norm=Norm(kind="layer", bias=True),
        attention=Attention(kind="fused_qkv", num_heads=heads, num_kv_heads=heads, head_dim=head_dim,
                            v_head_dim=head_dim, rope_dim=rope_dim,
                            dropout=r.fraction("attention_dropout", 0.0)),
        mlp=MLP(kind="plain", activation=_activation(r.str("hidden_act", "gelu")), intermediate_size=inter),
        linears=linears, other_params={"norms": 4 * d},
        residual_dropout=r.fraction("hidden_dropout", 0.0),
    )
    return _spec(r, name, [block] * r.int("num_hidden_layers"), d=d, vocab=r.int("vocab_size"),
                 tie=r.bool("tie_word_embeddings", False), final_norm=Norm(kind="layer", bias=True))


def _read_falcon(r: ConfigReader, name: str | None) -> ModelSpec:
    d = r.int("hidden_size")
    heads = r.int("num_attention_heads", "n_head")
    head_dim = _per_head(r, d, heads)
    bias = r.bool("bias", False)
    new_arch = r.bool("new_decoder_architecture", False)
    multi_query = r.bool("multi_query", True)
    kv_heads = r.int("num_kv_heads", default=heads)
    if new_arch:
        qkv_out, kv = (heads + 2 * kv_heads) * head_dim, kv_heads
    elif multi_query:
        qkv_out, kv = d + 2 * head_dim, 1
    else:
        qkv_out, kv = 3 * d, heads
    ffn = r.int("ffn_hidden_size", default=4 * d)
    parallel = r.bool("parallel_attn", True)
    if new_arch:
        num_norms = 1 if r.config.get("num_ln_in_parallel_attn") == 1 else 2
    else:
        num_norms = 1 if parallel else 2
    linears = (
        Linear(path="self_attention.query_key_value", in_features=d, out_features=qkv_out, bias=bias),
        Linear(path="self_attention.dense", in_features=d, out_features=d, bias=bias),
        Linear(path="mlp.dense_h_to_4h", in_features=d, out_features=ffn, bias=bias, component="mlp"),
        Linear(path="mlp.dense_4h_to_h", in_features=ffn, out_features=d, bias=bias, component="mlp"),
    )
    warnings = ("alibi position bias is not modelled separately",) if r.bool("alibi", False) else ()
    block = Block(
        layout="parallel" if (parallel or new_arch) else "pre",
        norm=Norm(kind="layer", bias=True), num_norms=num_norms,
        attention=Attention(kind="fused_qkv", num_heads=heads, num_kv_heads=kv, head_dim=head_dim,
                            v_head_dim=head_dim, rope_dim=0 if r.bool("alibi", False) else head_dim,
                            dropout=r.fraction("attention_dropout", 0.0), explicit_mask=True,
                            softmax_fp32=False),
        mlp=MLP(kind="plain", activation=_activation(r.str("activation", "gelu")), intermediate_size=ffn),
        linears=linears, other_params={"norms": num_norms * 2 * d},
        residual_dropout=r.fraction("hidden_dropout", 0.0),
    )
    return _spec(r, name, [block] * r.int("num_hidden_layers", "n_layer"), d=d, vocab=r.int("vocab_size"),
                 tie=r.bool("tie_word_embeddings", True), final_norm=Norm(kind="layer", bias=True),
                 warnings=warnings)


# ------------------------------------------------------------- dispatch


def _read_generic(r: ConfigReader, name: str | None) -> ModelSpec:
    """Any decoder with the standard keys: estimated as a Llama-style block."""
    d = r.int("hidden_size", "n_embd", "d_model")
    heads = r.int("num_attention_heads", "n_head", "num_heads")
    kv_heads = r.int("num_key_value_heads", "num_kv_heads", default=heads)
    head_dim = _head_dim(r, d, heads)
    inter = r.int("intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size", default=4 * d)
    act = _activation(r.str("hidden_act", "") or r.str("activation_function", "silu"))
    gated = act == "silu"
    linears = _qkvo("self_attn", d, heads, kv_heads, head_dim, qkv_bias=r.bool("attention_bias", False),
                    o_bias=r.bool("attention_bias", False))
    if gated:
        linears += _gated_mlp("mlp", d, inter, r.bool("mlp_bias", False))
    else:
        linears += [Linear(path="mlp.fc1", in_features=d, out_features=inter, component="mlp"),
                    Linear(path="mlp.fc2", in_features=inter, out_features=d, component="mlp")]
    block = Block(
        attention=Attention(num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim, v_head_dim=head_dim,
                            rope_dim=head_dim),
        mlp=MLP(kind="gated" if gated else "plain", activation=act, intermediate_size=inter),
        linears=tuple(linears), other_params={"norms": 2 * d},
    )
    warning = (f"model_type {r.model_type!r} is not one ftplan knows exactly; parameters and memory are a "
               "generic Llama-style decoder estimate from the standard config keys")
    return _spec(r, name, [block] * r.int("num_hidden_layers", "n_layer", "num_layers"), d=d,
                 vocab=r.int("vocab_size"), tie=r.bool("tie_word_embeddings", False), final_norm=Norm(),
                 warnings=(warning,))


def _llama_like(family: str) -> Callable[[ConfigReader, str | None], ModelSpec]:
    return lambda r, name: _read_llama_like(r, name, family=family)


def _qwen_moe(family: str) -> Callable[[ConfigReader, str | None], ModelSpec]:
    return lambda r, name: _read_qwen_moe(r, name, family=family)


READERS: dict[str, Callable[[ConfigReader, str | None], ModelSpec]] = {
    **{t: _llama_like(t) for t in ("llama", "mistral", "qwen2", "qwen3", "granite", "gemma", "gemma2",
                                   "gemma3_text", "olmo2", "starcoder2", "phi3")},
    "mixtral": _read_mixtral,
    "qwen2_moe": _qwen_moe("qwen2_moe"),
    "qwen3_moe": _qwen_moe("qwen3_moe"),
    "deepseek_v3": _read_deepseek_v3,
    "gpt2": _read_gpt2,
    "gpt_neox": _read_gpt_neox,
    "falcon": _read_falcon,
}

EXACT_MODEL_TYPES = tuple(READERS)


def read_config(config: dict, *, source: str, name: str | None = None, wrapped: bool = False) -> ModelSpec:
    """The spec of a config dict; `wrapped` is set for the text_config of a multimodal wrapper (one level: a
    text_config inside a text_config is not a real model, and following it could recurse a thousand times)."""
    model_type = ConfigReader(config, source, model_type="?").str("model_type", "") or None
    if model_type not in READERS and not wrapped and isinstance(config.get("text_config"), dict):
        # Multimodal wrappers (e.g. Gemma 3, LLaVA): plan the language model they carry.
        text = dict(config["text_config"])
        text.setdefault("architectures", config.get("architectures"))
        if config.get("quantization_config") is not None:  # it lives at the top, for the whole model
            text.setdefault("quantization_config", config["quantization_config"])
        spec = read_config(text, source=f"{source} (text_config)", name=name, wrapped=True)
        note = f"{model_type}: only the language model (text_config) is planned; the vision tower is not counted"
        return spec.model_copy(update={"warnings": (*spec.warnings, note)})
    if not model_type:
        raise FtplanError(f"{source}: missing key 'model_type'; is this a transformers config.json?")
    reader = READERS.get(model_type, _read_generic)
    return reader(ConfigReader(config, source), name)
