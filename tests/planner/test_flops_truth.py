"""Training FLOPs per token against `torch.utils.flop_counter.FlopCounterMode` on real CPU models.

Like with like: the planner counts matrix-multiply FLOPs (2 per multiply-accumulate) and
FlopCounterMode counts the matmul-class aten ops (mm, addmm, bmm, baddbmm, convolution, and
SDPA's CUDA kernels) with the same convention; neither counts elementwise ops, norms, softmax,
the loss or the embedding lookup. Two choices keep the counter complete on CPU:

* attention runs the eager kernel: FlopCounterMode has no formula for SDPA's CPU kernel
  (`_scaled_dot_product_flash_attention_for_cpu`), while the eager kernel's QKᵀ and AV `bmm`
  are the FLOPs SDPA does (both dense, as the planner counts them after PaLM);
* MoE experts run transformers' eager loop (no formula for `torch._grouped_mm`); each token
  passes through its top-k experts either way.

TOLERANCE = 1%: the planner counts every non-embedding parameter as a matmul weight (Kaplan's
2N), norm weights and biases included; they are under 0.5% of N in these configs (under 0.1%
in real models), and nothing else separates the two counts where the planner's model holds.

Gradient checkpointing is LLaMA-Factory's (truth.enable_gradient_checkpointing: reentrant, only
layers with a trainable parameter are checkpointed); the counter sees the recompute, because it
runs inside the backward under the same dispatch mode (test_the_counter_sees_the_recompute).
"""

from __future__ import annotations

import pytest

from planner.flops import training_flops_per_token
from planner.methods import layout
from planner.params import count_params
from planner.plan import Plan
from planner.spec import spec_from_config
from tests.planner.truth import build_model, enable_gradient_checkpointing
from tests.planner.truth_training import training_flops

TOLERANCE = 0.01
BATCH, SEQ = 1, 128
RANK = 8

LAYERS = 4

_COMMON = {"vocab_size": 1024, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False}
_DECODER = {**_COMMON, "num_hidden_layers": LAYERS, "hidden_size": 256, "num_attention_heads": 4,
            "num_key_value_heads": 2, "intermediate_size": 688}
CONFIGS = {
    "llama": {"model_type": "llama", **_DECODER},
    "qwen2": {"model_type": "qwen2", **_DECODER},  # q/k/v biases
    "phi3": {"model_type": "phi3", **_DECODER},  # fused qkv and gate_up
    "gpt2": {"model_type": "gpt2", **_COMMON, "n_layer": LAYERS, "n_embd": 256, "n_head": 4,
             "n_positions": 256},  # Conv1D (addmm), learned positions
    "mixtral": {"model_type": "mixtral", **_DECODER, "intermediate_size": 256, "num_local_experts": 4,
                "num_experts_per_tok": 2},
}

# (method, freeze_trainable_layers)
CASES = [("full", 1), ("lora", 1), ("freeze", 2), ("freeze", -1)]

# The first layer to run backward, where the block's input carries no gradient (LoRA: frozen embedding and
# norms; freeze: a post-norm block's attention reads it unnormed), with targets that leave parts of it frozen.
EXTRA_CONFIGS = {
    "gpt_neox": {"model_type": "gpt_neox", **_COMMON, "num_hidden_layers": LAYERS, "hidden_size": 256,
                 "num_attention_heads": 4, "intermediate_size": 688, "use_parallel_residual": True},  # parallel
    "olmo2": {"model_type": "olmo2", **_DECODER},  # post-norm
}
TARGET_CASES = [  # (model_type, method, lora_target)
    ("llama", "lora", "q_proj,v_proj"),  # no dK in layer 0
    ("llama", "lora", "gate_proj,up_proj,down_proj"),  # no attention backward in layer 0, nor gate/up input grads
    ("llama", "lora", "o_proj"),
    ("mixtral", "lora", "w1,w2,w3"),  # experts only: layer 0's router and experts' gate_up get no input grads
    ("mixtral", "lora", "all"),  # LLaMA-Factory's all: attention only
    ("gpt_neox", "lora", "all-linear"),  # parallel: the MLP reads the block input too
    ("olmo2", "freeze", "all-linear"),
]
def measure(model_type: str, method: str, layers: int, checkpointing: bool = False,
            target: str = "all-linear") -> tuple[float, float]:
    """(planner, FlopCounterMode) FLOPs per token of one training step."""
    config = {**CONFIGS, **EXTRA_CONFIGS}[model_type]
    spec = spec_from_config(config, source="test")
    counts = count_params(spec)
    # by default peft's all-linear, which on transformers 5's Mixtral also wraps the fused experts and the
    # router (ParamWrapper); LLaMA-Factory's `all` wraps its attention only (test_methods_truth)
    plan = Plan(method=method, precision="fp32", attention="eager", batch_size=BATCH, seq_len=SEQ, lora_rank=RANK,
                lora_target=target, freeze_trainable_layers=layers, gradient_checkpointing=checkpointing)
    ours = training_flops_per_token(spec, counts, layout(spec, counts, plan), plan)
    model = build_model(config, method=method, precision="fp32", kernel="eager", lora_rank=RANK,
                        lora_target=target, freeze_trainable_layers=layers)
    if checkpointing:
        enable_gradient_checkpointing(model)
    forward, backward, _ = training_flops(model, BATCH, SEQ, config["vocab_size"])
    return ours, (forward + backward) / (BATCH * SEQ)


def _params():
    for model_type in CONFIGS:
        for method, layers in CASES:
            marks = [] if model_type in ("llama", "mixtral") else [pytest.mark.slow]
            yield pytest.param(model_type, method, layers, marks=marks,
                               id=f"{model_type}-{method}{layers if method == 'freeze' else ''}")


@pytest.mark.parametrize(("model_type", "method", "layers"), list(_params()))
def test_training_flops_match_flop_counter(model_type: str, method: str, layers: int) -> None:
    ours, real = measure(model_type, method, layers)
    assert abs(ours - real) / real <= TOLERANCE, f"ours {ours:,.0f} vs real {real:,.0f} ({(ours - real) / real:+.2%})"


@pytest.mark.parametrize(("model_type", "method", "target"), [
    pytest.param(*case, marks=[] if case[0] == "llama" else [pytest.mark.slow], id="-".join(case))
    for case in TARGET_CASES])
def test_first_layer_backward_matches_flop_counter(model_type: str, method: str, target: str) -> None:
    """Which gradients the first layer to run backward computes depends on what in it trains."""
    ours, real = measure(model_type, method, 1, target=target)
    assert abs(ours - real) / real <= TOLERANCE, f"ours {ours:,.0f} vs real {real:,.0f} ({(ours - real) / real:+.2%})"


@pytest.mark.parametrize(("model_type", "method", "layers"), [
    ("llama", "full", 1), ("llama", "lora", 1), ("llama", "freeze", 2), ("mixtral", "lora", 1)])
def test_checkpointing_adds_what_the_counter_sees(model_type: str, method: str, layers: int) -> None:
    """What gradient checkpointing adds, planner against counter (the difference with and without it),
    so the comparison is not blurred by the errors the step without checkpointing already has. LLaMA-Factory
    recomputes only layers with a trainable parameter (freeze: 2 of 4), never the LM head, and makes the first
    checkpointed layer's input require grad (LoRA's layer 0 then computes its q/k/v input gradients);
    Mixtral's LoRA folds its experts' weights again in the recompute."""
    ours_gc, real_gc = measure(model_type, method, layers, checkpointing=True)
    ours, real = measure(model_type, method, layers)
    added, real_added = ours_gc - ours, real_gc - real
    assert abs(added - real_added) / real_added <= TOLERANCE, \
        f"ours +{added:,.0f} vs real +{real_added:,.0f} ({(added - real_added) / real_added:+.2%})"


def test_the_counter_sees_the_recompute() -> None:
    """The truth itself: with every layer checkpointed, backward grows by exactly the decoder layers' forward
    (the forward without the LM head's T x V x d matmul)."""
    config = CONFIGS["llama"]
    plain = build_model(config, method="full", precision="fp32", kernel="eager")
    forward, backward, _ = training_flops(plain, BATCH, SEQ, config["vocab_size"])
    checkpointed = build_model(config, method="full", precision="fp32", kernel="eager")
    enable_gradient_checkpointing(checkpointed)
    forward_gc, backward_gc, _ = training_flops(checkpointed, BATCH, SEQ, config["vocab_size"])
    head = 2 * BATCH * SEQ * config["vocab_size"] * config["hidden_size"]
    assert forward_gc == forward
    assert backward_gc - backward == forward - head
