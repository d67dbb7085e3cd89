"""Build a real transformers model for a `Plan`, set up the way LLaMA-Factory sets it up.

* the base is loaded in the compute dtype (fp32, bf16 or fp16);
* mixed precision (`bf16-mixed`, `fp16-mixed`) up-casts the *trainable* parameters to
  fp32 (LLaMA-Factory's `cast_trainable_params_to_fp32`), and the step runs under autocast;
* freeze trains the last N decoder layers (or the first N for N < 0);
* LoRA (and DoRA), OFT, IA3, prefix, prompt and P-tuning go through `peft.get_peft_model` with peft's own
  configs built from the plan; Houlsby adapters, which peft lacks, come from diagnostics.adapters. Every
  trainable tensor is fp32 (peft's `autocast_adapter_dtype`, the planner's `adapter_dtype`);
* QLoRA loads the base in 4-bit NF4 through bitsandbytes (it needs a checkpoint on
  disk: a config-only model is first saved with random weights to a temporary folder);
* gradient checkpointing as LLaMA-Factory installs it: only decoder layers holding a trainable
  parameter are checkpointed (reentrant), their hidden-states input made to require grad. Prompt and
  P-tuning (which LLaMA-Factory lacks) hold none in the layers, yet their gradient runs through all of
  them: every layer is checkpointed, as the HF Trainer does. peft refuses prefix tuning with checkpointing.

torch, transformers, peft and bitsandbytes are imported inside the functions.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

from diagnostics.monitor import layer_index
from planner.errors import EnvironmentMissing, FtplanError
from planner.plan import Plan
from planner.spec import spec_from_config

TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
KERNELS = {"eager": "eager", "sdpa": "sdpa", "flash": "flash_attention_2"}


def torch_dtype(name: str):
    import torch

    return getattr(torch, TORCH_DTYPES[name])


def hf_config(config: dict):
    from transformers import AutoConfig

    fields = dict(config)
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


def _lora_targets(model, target: str):
    import torch
    from transformers.pytorch_utils import Conv1D

    from planner.params import ALL, ALL_LINEAR, ATTENTION_ALIASES, target_names

    names = target_names(target)
    lowered = {n.lower() for n in names}
    if ALL_LINEAR in lowered:
        return ALL_LINEAR  # peft's own expansion: Conv1D and transformers 5's fused experts included
    if ALL in lowered:
        # LLaMA-Factory's `all` (model/model_utils/misc.py, find_all_linear_modules): the last name of every
        # nn.Linear except the output head (bitsandbytes' Linear4bit/8bitLt are nn.Linear subclasses)
        found = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                 if isinstance(module, torch.nn.Linear) and "lm_head" not in name}
        if not found:
            raise FtplanError("this model has no nn.Linear layers for LLaMA-Factory's `all` (GPT-2 uses Conv1D); "
                              "name the modules or use all-linear", field="lora_target")
        return sorted(found)
    if lowered & ATTENTION_ALIASES:
        found = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                 if isinstance(module, (torch.nn.Linear, Conv1D)) and any(k in name for k in ("attn", "attention"))}
        return sorted(found)
    return names


def _checkpoint_trainable_layers(model, every_layer: bool = False) -> None:
    """LLaMA-Factory's gradient checkpointing (model/model_utils/checkpointing.py,
    `get_custom_gradient_checkpointing_func`, `use_reentrant_gc` default True): a layer is checkpointed
    only if one of its parameters trains when it runs (so LoRA adapters added later count), and the
    first floating-point argument, the hidden states, is made to require grad so the recompute has a
    gradient to carry. Installed through transformers' `_set_gradient_checkpointing`, as LLaMA-Factory does.
    `every_layer`: checkpoint frozen layers too (a gradient for virtual tokens passes through them)."""
    from functools import partial

    import torch
    from torch.utils.checkpoint import checkpoint

    def trainable_only(func, *args, **kwargs):
        layer = func.args[0] if isinstance(func, partial) and func.args else getattr(func, "__self__", None)
        if not every_layer and layer is not None and not any(p.requires_grad for p in layer.parameters()):
            return func(*args, **kwargs)
        hidden = next((a for a in args if torch.is_tensor(a) and torch.is_floating_point(a)), None)
        if hidden is not None:
            hidden.requires_grad_(True)
        return checkpoint(func, *args, use_reentrant=True, **kwargs)

    model._set_gradient_checkpointing(enable=True, gradient_checkpointing_func=trainable_only)
    model.config.use_cache = False


def peft_config(model, plan: Plan):
    """peft's config for the plan's method, with peft's defaults wherever the plan says nothing."""
    import peft

    if plan.method in ("lora", "qlora"):
        return peft.LoraConfig(r=plan.lora_rank, lora_alpha=2 * plan.lora_rank, lora_dropout=plan.lora_dropout,
                               target_modules=_lora_targets(model, plan.lora_target), use_dora=plan.use_dora)
    if plan.method == "oft":
        return peft.OFTConfig(r=plan.oft_blocks, oft_block_size=plan.oft_block_size,
                              target_modules=_lora_targets(model, plan.lora_target))
    if plan.method == "ia3":
        if plan.ia3_target is None:  # peft's targets and feed-forward modules for the model type
            return peft.IA3Config()
        from planner.params import target_names
        from planner.peft_methods import IA3_FEEDFORWARD

        # named targets keep the model type's feed-forward modules (the planner requires them among the targets)
        return peft.IA3Config(target_modules=target_names(plan.ia3_target),
                              feedforward_modules=list(IA3_FEEDFORWARD.get(model.config.model_type, ())))
    # prompt learning: PeftModelForCausalLM prepends the virtual tokens, extends the attention mask over them
    # and pads the labels with -100 there
    causal = peft.TaskType.CAUSAL_LM
    if plan.method == "prefix":
        return peft.PrefixTuningConfig(task_type=causal, num_virtual_tokens=plan.num_virtual_tokens,
                                       prefix_projection=plan.prefix_projection,
                                       encoder_hidden_size=plan.encoder_hidden_size)
    if plan.method == "prompt":
        return peft.PromptTuningConfig(task_type=causal, num_virtual_tokens=plan.num_virtual_tokens)
    if plan.method == "ptuning":
        return peft.PromptEncoderConfig(task_type=causal, num_virtual_tokens=plan.num_virtual_tokens,
                                        encoder_hidden_size=plan.encoder_hidden_size,
                                        encoder_reparameterization_type=plan.encoder_type.upper())
    raise ValueError(f"no peft config for method {plan.method}")


def check_buildable(plan: Plan) -> None:
    """What peft would refuse only after the model is built, refused before."""
    if plan.method == "prefix" and plan.gradient_checkpointing:
        # peft_model.py `_setup_prompt_encoder`: the prefix is a key/value cache, and a recomputed layer would
        # append its keys and values to it a second time
        raise FtplanError("peft's prefix tuning does not run with gradient checkpointing; drop "
                          "{gradient_checkpointing}, or use {method} prompt or ptuning", field="gradient_checkpointing")


def build_model(config: dict | None, plan: Plan, *, weights: str | Path | None = None, device: str = "cpu",
                seed: int = 0, workdir: str | Path | None = None):
    """A model ready to train under `plan`: from `weights` (a local model directory) or `config` (random init)."""
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError:
        raise EnvironmentMissing("the diagnostics need torch and transformers: pip install 'ftplan[diagnostics]'") \
            from None
    check_buildable(plan)
    torch.manual_seed(seed)
    dtype = torch_dtype(plan.compute_dtype)
    # sdpa is transformers' own default: leaving the choice to it falls back to eager where a model has no SDPA
    # (Gemma-2), as a framework's default run does and as the planner plans it
    kernel = None if plan.attention == "sdpa" else KERNELS[plan.attention]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if plan.method == "qlora":
            from transformers import BitsAndBytesConfig

            if weights is None:
                workdir = Path(workdir or tempfile.mkdtemp(prefix="ftplan-qlora-"))
                AutoModelForCausalLM.from_config(hf_config(config)).save_pretrained(workdir)
                weights = workdir
            quant = BitsAndBytesConfig(
                load_in_4bit=plan.base_bits == 4, load_in_8bit=plan.base_bits == 8, bnb_4bit_quant_type="nf4",
                bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=plan.double_quant)
            model = AutoModelForCausalLM.from_pretrained(weights, quantization_config=quant, dtype=dtype,
                                                         attn_implementation=kernel, device_map={"": device})
        elif weights is not None:
            model = AutoModelForCausalLM.from_pretrained(weights, dtype=dtype, attn_implementation=kernel)
        else:
            model = AutoModelForCausalLM.from_config(hf_config(config), dtype=dtype, attn_implementation=kernel)
        if plan.method != "qlora":
            model.to(device)
        if plan.method == "freeze":
            layers = model.config.num_hidden_layers
            n = plan.freeze_trainable_layers
            chosen = set(range(layers - n, layers)) if n > 0 else set(range(-n))
            for name, p in model.named_parameters():
                p.requires_grad_(layer_index(name) in chosen)
        if plan.gradient_checkpointing:
            _checkpoint_trainable_layers(model, every_layer=plan.method in ("prompt", "ptuning"))
        if plan.method == "adapter":
            from diagnostics.adapters import attach_adapters
            from planner.peft_methods import adapter_width

            spec = spec_from_config(config if config is not None else model.config.to_dict(), source="diagnose")
            attach_adapters(model, spec.hidden_size, adapter_width(spec, plan))
        elif plan.peft:
            from peft import get_peft_model

            model = get_peft_model(model, peft_config(model, plan))
    # mixed precision up-casts full/freeze's trainable weights (LLaMA-Factory); every other method trains fp32
    # tensors on any base (peft's autocast_adapter_dtype, the planner's adapter_dtype)
    if plan.mixed or plan.peft:
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    model.train()
    return model
