"""Independent truth for the optimizers that live in their own packages (torchao, galore-torch, apollo-torch,
adam-mini, lomo-optim): each is built the way a framework builds it, stepped on CPU, and every storage it
keeps is counted once.

* torchao AdamW8bit/AdamW4bit, LOMO/AdaLomo, GaLore and APOLLO (plain and layer-wise): the HF Trainer's own
  `create_optimizer` for the `optim` name, with the `optim_target_modules` regex ftplan exports for TRL
  (every module under a decoder layer, so the LM head keeps plain AdamW, as LLaMA-Factory's
  `galore_target: all` does: find_all_linear_modules leaves `lm_head` out);
* Adam-mini: the call LLaMA-Factory's `_create_adam_mini_optimizer` makes (train/trainer_utils.py).

Like `truth.py`, it imports nothing from `planner`, `diagnostics` or `tui`.
"""

from __future__ import annotations

import contextlib
import warnings

from tests.planner.truth import random_ids

DECODER_MODULES = r".*\.layers\.\d+\..*"  # what ftplan's TRL export writes as optim_target_modules


def trainer_optimizer(model, optim: str, output_dir, optim_args: str | None = None):
    """`transformers.Trainer.create_optimizer` for `optim` (CPU, no logging); layer-wise optimizers come back
    as the Trainer's `LayerWiseDummyOptimizer`, whose `optimizer_dict` holds one optimizer per parameter."""
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(output_dir), optim=optim, optim_args=optim_args, use_cpu=True,
                             report_to="none", learning_rate=1e-3, save_strategy="no", logging_strategy="no",
                             optim_target_modules=DECODER_MODULES if ("galore" in optim or "apollo" in optim)
                             else None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = Trainer(model=model, args=args)
        return trainer.create_optimizer()


def adam_mini_optimizer(model):
    """Adam-mini with the arguments LLaMA-Factory passes (`_create_adam_mini_optimizer`)."""
    from adam_mini import Adam_mini

    config = model.config
    with contextlib.redirect_stdout(None):  # Adam-mini prints every block it finds
        return Adam_mini(named_parameters=model.named_parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                         weight_decay=0.0, model_sharding=False, dim=config.hidden_size,
                         n_heads=config.num_attention_heads, n_kv_heads=config.num_key_value_heads)


@contextlib.contextmanager
def cpu_only():
    """Run GPU-minded optimizers on a CPU-only torch without changing what they allocate: AdaLomo creates its
    state with `.cuda()` (lomo_optim/adalomo.py `__init__`, lines 87-96), which here keeps the tensor on the host;
    GaLoreAdamW8bit calls `torch.cuda.synchronize()` (galore_torch/adamw8bit.py lines 65 and 80), a no-op here;
    torchao compiles its per-parameter step (`torch.compile` in torchao/optim/adam.py), which runs eagerly
    here, the same buffers without minutes of C++ compilation."""
    import torch

    cuda, synchronize = torch.Tensor.cuda, torch.cuda.synchronize
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.cuda.synchronize = lambda *a, **k: None
    try:
        with torch.compiler.set_stance("force_eager"):
            yield
    finally:
        torch.Tensor.cuda, torch.cuda.synchronize = cuda, synchronize


def step(model, optim, vocab: int, steps: int = 2, seq: int = 8) -> None:
    """`steps` forward/backward/step rounds on random tokens; LOMO's update runs inside `fused_backward`,
    a layer-wise optimizer's inside backward's gradient hooks (the Trainer's dummy `step` does nothing)."""
    for k in range(steps):
        ids = random_ids(1, seq, vocab, seed=k)
        loss = model(input_ids=ids, labels=ids).loss
        with warnings.catch_warnings(), contextlib.redirect_stdout(None):
            warnings.simplefilter("ignore")
            if hasattr(optim, "fused_backward"):
                optim.fused_backward(loss, 1e-3)
                continue
            loss.backward()
            optim.step()
        optim.zero_grad(set_to_none=True)


def _tensors(value, depth: int = 0):
    """Tensors reachable from one state value: itself, or the tensor attributes of an object kept in the state
    (GaLore's and APOLLO's projector keeps its projection matrix in `ortho_matrix`), or those in a dict."""
    import torch

    if isinstance(value, torch.Tensor) and type(value) is not torch.Tensor and hasattr(value, "__tensor_flatten__"):
        # torchao's quantized state is a tensor subclass: its storage lives in the inner tensors (codes, scale,
        # and its own quantile map)
        names, _ = value.__tensor_flatten__()
        for name in names:
            yield from _tensors(getattr(value, name), depth)
    elif isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)) and depth < 3:
        for v in value:
            yield from _tensors(v, depth + 1)
    elif isinstance(value, dict) and depth < 3:
        for v in value.values():
            yield from _tensors(v, depth + 1)
    elif hasattr(value, "__dict__") and depth < 2 and not isinstance(value, (torch.nn.Module, type)):
        for v in vars(value).values():
            yield from _tensors(v, depth + 1)


def optimizers_of(optim) -> list:
    """The optimizer itself, or each parameter's optimizer of a layer-wise one."""
    inner = getattr(optim, "optimizer_dict", None)
    return list(inner.values()) if inner else [optim]


def kept_storages(optim, *, include_scalars: bool = True) -> dict[str, int]:
    """Bytes of every storage the optimizer keeps, each once, by the state key (or attribute) that holds it:
    `optimizer.state` of each (inner) optimizer, and tensors the optimizer object keeps as attributes (AdaLomo's
    `exp_avg_sq_row` / `exp_avg_sq_col` / `exp_avg_sq` dicts). Parameters, gradients and the model are not
    counted; 0-dim tensors only with `include_scalars`."""
    import torch

    params = {p.untyped_storage().data_ptr() for o in optimizers_of(optim) for g in o.param_groups
              for p in g["params"]}
    seen: set[int] = set(params)
    out: dict[str, int] = {}

    def add(key: str, value) -> None:
        for t in _tensors(value):
            ptr = t.untyped_storage().data_ptr()
            if ptr in seen or (t.dim() == 0 and not include_scalars):
                continue
            seen.add(ptr)
            out[key] = out.get(key, 0) + t.untyped_storage().nbytes()

    for o in optimizers_of(optim):
        for state in o.state.values():
            for key, value in state.items():
                add(key, value)
        for key, value in vars(o).items():
            if key not in ("state", "param_groups", "model", "defaults") and not isinstance(value, torch.nn.Module):
                add(key, value)
    return out
