"""Independent truth from the real stack: transformers models, peft, bitsandbytes, autograd.

Every model here is built with literal transformers / peft / bitsandbytes calls, set up the
way LLaMA-Factory sets it up (src/llamafactory/model/{loader,adapter,patcher}.py and
model_utils/{misc,quantization}.py), re-derived from that source rather than from ftplan:

* the base loads in the compute dtype: LLaMA-Factory loads `dtype="auto"`, i.e. the
  checkpoint's dtype, and a checkpoint is taken to be stored in the compute dtype;
* `cast_trainable_params_to_fp32` (init_adapter): every precision but pure bf16 up-casts
  the trainable parameters to fp32 after the method is set up;
* full: every parameter trains;
* freeze: decoder layers `num_layers - N .. num_layers - 1` train for N > 0, layers `0 .. -N - 1`
  for N < 0, selected by the substring ".{index}." in the parameter name (`_setup_freeze_tuning`);
* LoRA: `peft.get_peft_model(model, LoraConfig(task_type=CAUSAL_LM, r, lora_alpha=2r,
  lora_dropout, target_modules))`, adapters in fp32 (peft's `autocast_adapter_dtype=True`);
  `all` is `find_all_linear_modules`: the last name of every module whose class name contains
  "Linear" (and not "Embedding"), lm_head excepted; a comma list is passed as given (also
  accepted: peft's and TRL's `all-linear`, and `attention`, the attention block's linears);
* QLoRA: `from_pretrained` with `BitsAndBytesConfig(load_in_4bit, bnb_4bit_quant_type="nf4",
  bnb_4bit_use_double_quant, bnb_4bit_compute_dtype=bnb_4bit_quant_storage=compute dtype)` and
  `device_map={"": device}` (`configure_quantization`); LLaMA-Factory then prepares the model
  with its own `prepare_model_for_training` (layer norms stay in the compute dtype, lm_head
  output not up-cast, by default) and never calls peft's `prepare_model_for_kbit_training`;
* gradient checkpointing (`enable_gradient_checkpointing`): reentrant, and only decoder layers
  holding a trainable parameter are checkpointed (model_utils/checkpointing.py).

Only tests and benchmarks import this module; it imports nothing from `planner`,
`diagnostics` or `tui` (tests/test_truth_hygiene.py proves it), and `planner` never
imports torch.
"""

from __future__ import annotations

import contextlib
import tempfile
import warnings
from pathlib import Path

TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
# precision -> (compute dtype the base is loaded in, trainable parameters up-cast to fp32?)
PRECISIONS = {"fp32": ("fp32", True), "bf16": ("bf16", False), "fp16": ("fp16", False),
              "bf16-mixed": ("bf16", True), "fp16-mixed": ("fp16", True)}
KERNELS = {"eager": "eager", "sdpa": "sdpa", "flash": "flash_attention_2"}
ATTENTION_WORDS = ("attention", "attn", "attention_only")  # a lora_target naming the attention projections


def torch_dtype(name: str):
    import torch

    return getattr(torch, TORCH_DTYPES[name])


def hf_config(config: dict):
    """The transformers config for a config.json-style dict."""
    from transformers import AutoConfig

    fields = dict(config)
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


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


def find_all_linear_modules(model) -> list[str]:
    """LLaMA-Factory's `lora_target: all` (model_utils/misc.py): last names of the "Linear" modules."""
    names = set()
    for name, module in model.named_modules():
        if "lm_head" in name:
            continue
        kind = module.__class__.__name__
        if "Linear" in kind and "Embedding" not in kind:
            names.add(name.split(".")[-1])
    return sorted(names)


def lora_target_modules(model, target: str) -> list[str] | str:
    """peft `target_modules` for a `lora_target`.

    `all` as LLaMA-Factory expands it; `all-linear` goes to peft unchanged (TRL's and peft's own
    spelling); `attention` = the linear modules inside the attention block; else a comma list.
    """
    names = [n.strip() for n in target.split(",") if n.strip()]
    lowered = {n.lower() for n in names}
    if names == ["all"]:
        return find_all_linear_modules(model)
    if names == ["all-linear"]:
        return "all-linear"
    if lowered & set(ATTENTION_WORDS):
        return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                       if isinstance(module, linear_like_types())
                       and any(word in name for word in ("attn", "attention"))})
    return names


def build_model(config: dict, *, method: str = "full", precision: str = "bf16", kernel: str = "sdpa",
                lora_rank: int = 4, lora_target: str = "all", lora_dropout: float = 0.0,
                freeze_trainable_layers: int = 1, double_quant: bool = True, quant_bits: int = 4,
                tmp_dir=None, seed: int = 0, device: str = "cpu", weights_dtype: str | None = None):
    """A random-weight model ready to train with `method` at `precision`, as LLaMA-Factory sets it up.

    `weights_dtype` loads the base in that dtype instead of the precision's and, for QLoRA, makes it
    `bnb_4bit_compute_dtype` too, as TRL's ModelConfig does (trl/trainer/utils.py `get_quantization_config`:
    `bnb_4bit_compute_dtype=model_args.dtype`)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    compute, upcast = PRECISIONS[precision]
    dtype = torch_dtype(weights_dtype or compute)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method == "qlora":
            from transformers import BitsAndBytesConfig

            folder = Path(tmp_dir or tempfile.mkdtemp(prefix="truth-qlora-"))
            AutoModelForCausalLM.from_config(hf_config(config), dtype=dtype).save_pretrained(folder)
            if quant_bits == 8:
                quant = BitsAndBytesConfig(load_in_8bit=True)
            else:
                quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=dtype,
                                           bnb_4bit_use_double_quant=double_quant, bnb_4bit_quant_type="nf4",
                                           bnb_4bit_quant_storage=dtype)
            model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=quant, dtype="auto",
                                                         attn_implementation=KERNELS[kernel],
                                                         device_map={"": device})
        else:
            model = AutoModelForCausalLM.from_config(hf_config(config), dtype=dtype,
                                                     attn_implementation=KERNELS[kernel]).to(device)

        if method == "freeze":
            layers = model.config.num_hidden_layers
            n = freeze_trainable_layers
            ids = range(max(0, layers - n), layers) if n > 0 else range(min(-n, layers))
            marks = [f".{i}." for i in ids]
            for name, param in model.named_parameters():
                param.requires_grad_(any(mark in name for mark in marks))
        elif method in ("lora", "qlora"):
            from peft import LoraConfig, TaskType, get_peft_model

            model = get_peft_model(model, LoraConfig(
                task_type=TaskType.CAUSAL_LM, inference_mode=False, r=lora_rank, lora_alpha=2 * lora_rank,
                lora_dropout=lora_dropout, target_modules=lora_target_modules(model, lora_target)))
    if upcast:
        for param in model.parameters():
            if param.requires_grad:
                param.data = param.data.to(torch.float32)
    model.train()
    return model


def enable_gradient_checkpointing(model, *, use_reentrant: bool = True) -> None:
    """Gradient checkpointing as LLaMA-Factory sets it up (model_utils/checkpointing.py).

    Only decoder layers that hold a trainable parameter are checkpointed, and their hidden-states
    input is made to require grad (`get_custom_gradient_checkpointing_func`); frozen layers run
    as they are. `use_reentrant` is LLaMA-Factory's `use_reentrant_gc` (default True). The
    function is installed through transformers' `_set_gradient_checkpointing`, as LLaMA-Factory does.
    """
    from functools import partial

    import torch
    from torch.utils.checkpoint import checkpoint

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = partial(checkpoint, use_reentrant=use_reentrant)

    def trainable_layers_only(func, *args, **kwargs):
        # transformers 5 passes partial(Layer.forward, layer, ...); older versions a bound method
        module = func.args[0] if isinstance(func, partial) and func.args else func.__self__
        if not any(p.requires_grad for p in module.parameters()):
            return func(*args, **kwargs)
        for arg in args:
            if torch.is_tensor(arg) and torch.is_floating_point(arg):
                arg.requires_grad_(True)
                break  # the first floating tensor is the hidden states
        return inner(func, *args, **kwargs)

    base._set_gradient_checkpointing(enable=True, gradient_checkpointing_func=trainable_layers_only)
    base.config.use_cache = False


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


def random_ids(batch: int, seq: int, vocab: int, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (batch, seq), generator=g)


@contextlib.contextmanager
def saved_storages(exclude: set[int]):
    """Every storage autograd saves inside the block, once each, `exclude` (model storages) left out: yields
    {data_ptr: the first tensor saved on it}. Holding the tensors keeps their storages from being reused."""
    import torch

    saved: dict[int, object] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in exclude and ptr not in saved:
            saved[ptr] = t
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield saved


def storage_bytes(saved: dict) -> int:
    return sum(t.untyped_storage().nbytes() for t in saved.values())


def measure_kept_bytes(model, batch: int, seq: int, vocab: int, *, seed: int = 0) -> int:
    """Unique storages autograd still holds for backward once forward + loss are done, parameters excluded.

    Unlike `measure_saved_bytes`, a tensor saved by a graph that dies inside the forward does not count: peft's
    DoRA builds B @ A through an identity matrix and uses it detached, so those saves are freed at once."""
    import weakref

    import torch

    ids = random_ids(batch, seq, vocab, seed)
    exclude = model_storages(model)
    packed: list = []

    def pack(t):
        packed.append(weakref.ref(t))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(input_ids=ids, labels=ids)
    kept: dict[int, int] = {}
    for ref in packed:
        t = ref()
        if t is not None and t.untyped_storage().data_ptr() not in exclude:
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    del out
    return sum(kept.values())


def measure_saved_bytes(model, batch: int, seq: int, vocab: int, *, seed: int = 0, autocast=None) -> int:
    """Unique storages autograd saves during forward + loss, parameters excluded."""
    import torch

    ids = random_ids(batch, seq, vocab, seed)
    ctx = torch.autocast("cpu", dtype=torch_dtype(autocast)) if autocast else contextlib.nullcontext()
    with saved_storages(model_storages(model)) as saved, ctx:
        out = model(input_ids=ids, labels=ids)
    del out
    nbytes = storage_bytes(saved)
    saved.clear()
    return nbytes


def peft_method_config(method: str, kw: dict):
    """The peft config of a non-LoRA method (and DoRA) with the plan fields in `kw`."""
    import peft

    causal = peft.TaskType.CAUSAL_LM
    target = kw.get("lora_target", "")
    target = target if target == "all-linear" else target.split(",")  # a plain string is a regex to peft
    if method == "prefix":
        return peft.PrefixTuningConfig(task_type=causal, num_virtual_tokens=kw["num_virtual_tokens"],
                                       prefix_projection=kw.get("prefix_projection", False),
                                       encoder_hidden_size=kw.get("encoder_hidden_size"))
    if method == "prompt":
        return peft.PromptTuningConfig(task_type=causal, num_virtual_tokens=kw["num_virtual_tokens"])
    if method == "ptuning":
        return peft.PromptEncoderConfig(task_type=causal, num_virtual_tokens=kw["num_virtual_tokens"],
                                        encoder_hidden_size=kw["encoder_hidden_size"],
                                        encoder_reparameterization_type=kw.get("encoder_type", "mlp").upper())
    if method == "ia3":
        if kw.get("ia3_target"):  # named targets, none of them scaled at the input
            return peft.IA3Config(task_type=causal, target_modules=kw["ia3_target"].split(","), feedforward_modules=[])
        return peft.IA3Config(task_type=causal)
    if method == "oft":
        return peft.OFTConfig(task_type=causal, target_modules=target, r=kw.get("oft_blocks", 0),
                              oft_block_size=kw.get("oft_block_size", 0))
    return peft.LoraConfig(task_type=causal, target_modules=target, r=kw["lora_rank"], use_dora=True)


class Houlsby:
    """Houlsby et al. (2019)'s bottleneck adapter, written from the paper (Sec. 2.1, Fig. 2): a down projection
    to `hidden // reduction`, a nonlinearity, an up projection, and a skip connection, inserted after the
    attention and after the feed-forward sublayer of every layer, applied to the sublayer's output before its
    residual add; everything else frozen. Its projections are fp32 like peft's adapters, and cast their input."""

    @staticmethod
    def attach(model, reduction: int) -> None:
        import torch
        from torch import nn

        for p in model.parameters():
            p.requires_grad_(False)
        hidden = model.config.hidden_size
        width = max(1, hidden // reduction)
        for layer in model.model.layers:
            for sub in (layer.self_attn, layer.mlp):
                down, up = nn.Linear(hidden, width), nn.Linear(width, hidden)
                sub.add_module("adapter_down", down)
                sub.add_module("adapter_up", up)

                def hook(module, args, output, down=down, up=up):
                    first = output[0] if isinstance(output, tuple) else output
                    delta = up(torch.nn.functional.silu(down(first.to(down.weight.dtype)))).to(first.dtype)
                    adapted = first + delta
                    return (adapted, *output[1:]) if isinstance(output, tuple) else adapted

                sub.register_forward_hook(hook)


def build_peft_method_model(config: dict, method: str, kw: dict, *, precision: str = "bf16", kernel: str = "sdpa",
                            seed: int = 0):
    """A random-weight model in `precision` with a PEFT method (or Houlsby adapters) on it, trainables in fp32."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    compute, _ = PRECISIONS[precision]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_config(hf_config(config), dtype=torch_dtype(compute),
                                                 attn_implementation=KERNELS[kernel])
        if method == "adapter":
            Houlsby.attach(model, kw.get("adapter_reduction", 16))
        else:
            from peft import get_peft_model

            model = get_peft_model(model, peft_method_config(method, kw))
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.to(torch.float32)
    model.train()
    return model
