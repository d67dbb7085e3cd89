"""Build a real transformers model for a `Plan`, set up the way LLaMA-Factory sets it up.

* the base is loaded in the compute dtype (fp32, bf16 or fp16);
* mixed precision (`bf16-mixed`, `fp16-mixed`) up-casts the *trainable* parameters to
  fp32 (LLaMA-Factory's `cast_trainable_params_to_fp32`), and the step runs under autocast;
* freeze trains the last N decoder layers (or the first N for N < 0);
* LoRA goes through `peft.get_peft_model` with its defaults (fp32 adapters);
* QLoRA loads the base in 4-bit NF4 through bitsandbytes (it needs a checkpoint on
  disk: a config-only model is first saved with random weights to a temporary folder);
* gradient checkpointing as LLaMA-Factory installs it: only decoder layers holding a trainable
  parameter are checkpointed (reentrant), their hidden-states input made to require grad.

torch, transformers, peft and bitsandbytes are imported inside the functions.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

from diagnostics.monitor import layer_index
from planner.errors import EnvironmentMissing, FtplanError
from planner.plan import Plan

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


def _checkpoint_trainable_layers(model) -> None:
    """LLaMA-Factory's gradient checkpointing (model/model_utils/checkpointing.py,
    `get_custom_gradient_checkpointing_func`, `use_reentrant_gc` default True): a layer is checkpointed
    only if one of its parameters trains when it runs (so LoRA adapters added later count), and the
    first floating-point argument, the hidden states, is made to require grad so the recompute has a
    gradient to carry. Installed through transformers' `_set_gradient_checkpointing`, as LLaMA-Factory does."""
    from functools import partial

    import torch
    from torch.utils.checkpoint import checkpoint

    def trainable_only(func, *args, **kwargs):
        layer = func.args[0] if isinstance(func, partial) and func.args else getattr(func, "__self__", None)
        if layer is not None and not any(p.requires_grad for p in layer.parameters()):
            return func(*args, **kwargs)
        hidden = next((a for a in args if torch.is_tensor(a) and torch.is_floating_point(a)), None)
        if hidden is not None:
            hidden.requires_grad_(True)
        return checkpoint(func, *args, use_reentrant=True, **kwargs)

    model._set_gradient_checkpointing(enable=True, gradient_checkpointing_func=trainable_only)
    model.config.use_cache = False


def build_model(config: dict | None, plan: Plan, *, weights: str | Path | None = None, device: str = "cpu",
                seed: int = 0, workdir: str | Path | None = None):
    """A model ready to train under `plan`: from `weights` (a local model directory) or `config` (random init)."""
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError:
        raise EnvironmentMissing("the diagnostics need torch and transformers: pip install 'ftplan[diagnostics]'") \
            from None
    torch.manual_seed(seed)
    dtype = torch_dtype(plan.compute_dtype)
    kernel = KERNELS[plan.attention]
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
            _checkpoint_trainable_layers(model)
        if plan.method in ("lora", "qlora"):
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(
                r=plan.lora_rank, lora_alpha=2 * plan.lora_rank, lora_dropout=plan.lora_dropout,
                target_modules=_lora_targets(model, plan.lora_target)))
    if plan.mixed:
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    model.train()
    return model
