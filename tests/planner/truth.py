"""Independent truth from the real stack: transformers models, peft, autograd.

Only tests and benchmarks import this module; `planner` itself never imports torch.
"""

from __future__ import annotations

import warnings


def hf_config(config: dict):
    from transformers import AutoConfig

    d = dict(config)
    return AutoConfig.for_model(d.pop("model_type"), **d)


def meta_model(config: dict):
    import torch
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(hf_config(config))


def linear_like_types():
    import torch
    from transformers.pytorch_utils import Conv1D

    return (torch.nn.Linear, Conv1D)


DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _torch_dtype(name: str):
    import torch

    return getattr(torch, DTYPES[name])


def attention_linear_names(model) -> list[str]:
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, linear_like_types()) and any(p in name for p in ("attn", "attention")):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def build_model(config: dict, *, method: str = "full", precision: str = "bf16", kernel: str = "sdpa",
                lora_rank: int = 4, lora_target: str = "all", lora_dropout: float = 0.0,
                freeze_trainable_layers: int = 1, double_quant: bool = True, tmp_dir=None, seed: int = 0):
    """A real CPU model set up the way LLaMA-Factory sets it up for `method`.

    Weights are loaded in the compute dtype (pure bf16 or fp32 here); LoRA via peft with its
    defaults (fp32 adapters); QLoRA through bitsandbytes 4-bit NF4 from a saved checkpoint.
    """
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    dtype = _torch_dtype(precision)
    cfg = hf_config(config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method == "qlora":
            from transformers import BitsAndBytesConfig

            path = tmp_dir or tempfile.mkdtemp(prefix="ftplan-qlora-")
            AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
            quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                       bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=double_quant)
            model = AutoModelForCausalLM.from_pretrained(path, quantization_config=quant, dtype=dtype,
                                                         attn_implementation=kernel)
        else:
            model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation=kernel)
        if method == "freeze":
            layers = cfg.num_hidden_layers
            n = freeze_trainable_layers
            chosen = set(range(layers - n, layers)) if n > 0 else set(range(-n))
            for name, p in model.named_parameters():
                parts = name.split(".")
                idx = next((int(parts[i + 1]) for i, part in enumerate(parts[:-1])
                            if part in ("layers", "h") and parts[i + 1].isdigit()), None)
                p.requires_grad_(idx in chosen)
        if method in ("lora", "qlora"):
            from peft import LoraConfig, get_peft_model

            if lora_target == "all":
                targets = "all-linear"
            elif lora_target == "attention":
                targets = attention_linear_names(model)
            else:
                targets = [t.strip() for t in lora_target.split(",")]
            model = get_peft_model(model, LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank,
                                                     target_modules=targets, lora_dropout=lora_dropout))
    model.train()
    return model


def model_storages(model) -> set[int]:
    """Data pointers of every parameter, buffer and bitsandbytes quantization constant."""
    import torch

    ptrs = set()
    for t in list(model.parameters()) + list(model.buffers()):
        ptrs.add(t.untyped_storage().data_ptr())
        state = getattr(t, "quant_state", None)
        for obj in (state, getattr(state, "state2", None)):
            for value in vars(obj).values() if obj is not None else ():
                if isinstance(value, torch.Tensor):
                    ptrs.add(value.untyped_storage().data_ptr())
    return ptrs


def measure_saved_bytes(model, batch: int, seq: int, vocab: int, *, seed: int = 0, autocast=None) -> int:
    """Unique storages autograd saves during forward + loss, parameters excluded."""
    import contextlib

    import torch

    exclude = model_storages(model)
    seen: dict[int, int] = {}
    keep = []

    def pack(t):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in exclude and ptr not in seen:
            seen[ptr] = storage.nbytes()
            keep.append(t)
        return t

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, seq), generator=g)
    ctx = torch.autocast("cpu", dtype=_torch_dtype(autocast)) if autocast else contextlib.nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), ctx:
        out = model(input_ids=ids, labels=ids)
    del out
    keep.clear()
    return sum(seen.values())
