"""Independent truth for alignment stages: one training step of TRL's own trainers, measured on CPU.

Each case builds a tiny random model (saved to a temporary folder and loaded back, as a TRL user
loads a checkpoint), a tiny offline word-level tokenizer and an in-memory dataset, hands them to
TRL's trainer (`DPOTrainer`, `KTOTrainer`, `RewardTrainer`, `trl.experimental.orpo.ORPOTrainer`,
`trl.experimental.cpo.CPOTrainer` with `loss_type="simpo"`, `cpo_alpha=0.0` for SimPO, `GRPOTrainer`) with a `peft_config` for LoRA, and then runs what the trainer itself runs for one
step: a batch from `trainer.get_train_dataloader()`, `trainer._prepare_inputs` (GRPO: generation
and scoring) and `trainer.compute_loss(model, inputs)`. So TRL's chosen+rejected concatenation,
KTO's KL batch, ORPO's and CPO's BOS and full logits, the reward model's `score` head, GRPO's generation and
TRL's fused LM head (`trl.trainer.utils.add_fused_lm_head`, `trl.kernels.chunked_logprob`) are the
real ones. Measured per case:

* `saved`: unique storages autograd saves for backward during `compute_loss` (the trained
  forward(s) and the loss), parameters and buffers of the policy and the reference excluded
  (`torch.autograd.graph.saved_tensors_hooks`, each storage counted once and kept alive so it
  cannot be reused, as `truth.measure_saved_bytes` does);
* `rows`, `seq`: the shape of `input_ids` in the forward that runs with gradients (DPO / ORPO / SimPO / RM:
  2B rows, chosen then rejected);
* `policy_bytes`: the trained model's parameters (LoRA: base + adapters, + `modules_to_save`);
* `reference_bytes` / `reference_param_bytes`: `trainer.ref_model`'s parameters + buffers /
  parameters only, 0 when TRL keeps no reference model;
* GRPO: `kv_cache`, the bytes of the `past_key_values` that `generate` builds for the local
  generation batch (captured by asking the trainer's own `generate` call for its cache), with
  `kv_len`, `generated` (sequences), `prompt_len` and `completion_len`.

Precision: "fp32" loads the model in float32, "bf16" in bfloat16 with no autocast (`bf16=False`,
`fp16=False` in the TRL config, whose own default would otherwise switch on autocast). Gradient
checkpointing is off unless asked for (`gradient_checkpointing=True`, TRL's own default, is switched on
the way `Trainer.train()` does it). `python -m tests.planner.truth_stages` prints every case as JSON lines.

Like `truth.py`, it imports nothing from `planner`, `diagnostics` or `tui`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import tempfile
import warnings
from pathlib import Path

from tests.planner.truth import build_model, model_storages, saved_storages, storage_bytes, torch_dtype

STAGES = ("dpo", "kto", "rm", "orpo", "simpo", "grpo")
LORA = {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"}
_VOCAB_CAP = 64  # words of the offline tokenizer (ids 0..2 are <pad>, <s>, </s>, as in configs.random_config)
_FOLDERS: dict[str, str] = {}  # (config, precision) -> saved checkpoint, built once per process
_TMP = None


def _tmp_root() -> Path:
    global _TMP
    if _TMP is None:
        _TMP = tempfile.TemporaryDirectory(prefix="truth-stages-")
    return Path(_TMP.name)


def _quiet() -> None:
    os.environ.setdefault("TQDM_DISABLE", "1")
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    for name in ("trl", "peft", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)


def checkpoint(config: dict, precision: str) -> str:
    """A folder holding the tiny random model in `precision`, as `save_pretrained` writes it."""
    key = json.dumps([config, precision], sort_keys=True)
    if key not in _FOLDERS:
        folder = _tmp_root() / f"model-{len(_FOLDERS)}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            build_model(config, method="full", precision=precision).save_pretrained(folder)
        _FOLDERS[key] = str(folder)
    return _FOLDERS[key]


def tokenizer(config: dict):
    """An offline word-level tokenizer: "<pad>"=0, "<s>"=1, "</s>"=2, "t3".."tN" = 3..N, one word one token,
    no special tokens added on encode (so every length is known), a tiny chat template for TRL's checks."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    size = min(int(config["vocab_size"]), _VOCAB_CAP)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"t{i}": i for i in range(3, size)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    tok.chat_template = ("{% for m in messages %}{{ m['content'] }}{% if not loop.last %} {% endif %}{% endfor %}"
                         "{% if add_generation_prompt %} {% endif %}")
    return tok


def _words(rng: random.Random, n: int, size: int) -> str:
    return " ".join(f"t{rng.randrange(3, size)}" for _ in range(n))


def dataset(stage: str, rows: int, prompt_len: int, completion_len: int, size: int, seed: int = 0):
    """In-memory rows whose every sequence has the same length. Completions get `completion_len - 1` words:
    TRL appends EOS, so prompt + completion is `prompt_len + completion_len` tokens (ORPO and CPO add BOS too)."""
    from datasets import Dataset

    rng = random.Random(seed)
    out = []
    for i in range(rows):
        prompt = _words(rng, prompt_len, size)
        if stage == "grpo":
            out.append({"prompt": prompt})
        elif stage == "kto":
            out.append({"prompt": prompt, "completion": " " + _words(rng, completion_len - 1, size),
                        "label": i % 2 == 0})
        else:
            out.append({"prompt": prompt, "chosen": " " + _words(rng, completion_len - 1, size),
                        "rejected": " " + _words(rng, completion_len - 1, size)})
    return Dataset.from_list(out)


@contextlib.contextmanager
def _one_thread():
    """Tiny matmuls run several times faster on one thread than on a busy pool; restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _param_bytes(model, buffers: bool = False) -> int:
    tensors = list(model.parameters()) + (list(model.buffers()) if buffers else [])
    seen: dict[int, int] = {}
    for t in tensors:
        seen.setdefault(id(t), t.numel() * t.element_size())
    return sum(seen.values())


def _backbone(model):
    """The decoder stack (e.g. LlamaModel): every trainer's forward goes through it via `__call__`."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.base_model


def _cache_bytes(cache) -> tuple[int, int]:
    """(bytes, cached length) of a transformers Cache / legacy tuple cache."""
    tensors = []
    if hasattr(cache, "layers"):
        for layer in cache.layers:
            tensors += [t for t in (getattr(layer, "keys", None), getattr(layer, "values", None)) if t is not None]
    elif hasattr(cache, "key_cache"):
        tensors = list(cache.key_cache) + list(cache.value_cache)
    else:
        tensors = [t for pair in cache for t in pair]
    seen: dict[int, int] = {}
    for t in tensors:
        seen.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
    return sum(seen.values()), (tensors[0].shape[-2] if tensors else 0)


def _trainer(stage: str, folder: str, tok, data, *, method: str, precision: str, batch: int, out_dir: str,
             precompute: bool, num_generations: int, completion_len: int, beta, gradient_checkpointing: bool):
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    dtype = torch_dtype(precision)
    common = dict(output_dir=out_dir, per_device_train_batch_size=batch, report_to=[], bf16=False, fp16=False,
                  use_cpu=True, save_strategy="no", seed=0, dataloader_num_workers=0,
                  gradient_checkpointing=gradient_checkpointing)
    if beta is not None:
        common["beta"] = beta
    peft = None
    if method == "lora":
        peft = LoraConfig(task_type="SEQ_CLS" if stage == "rm" else "CAUSAL_LM", **LORA)
    elif method != "full":
        raise ValueError(f"method {method!r}: full or lora")

    if stage == "rm":
        from trl import RewardConfig, RewardTrainer

        model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1, dtype=dtype)
        model.config.pad_token_id = tok.pad_token_id
        args = RewardConfig(max_length=None, **common)
        return RewardTrainer(model=model, args=args, train_dataset=data, processing_class=tok, peft_config=peft)

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    if stage == "dpo":
        from trl import DPOConfig, DPOTrainer

        args = DPOConfig(max_length=None, precompute_ref_log_probs=precompute, **common)
        return DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok, peft_config=peft)
    if stage == "kto":
        from trl import KTOConfig, KTOTrainer

        args = KTOConfig(max_length=None, precompute_ref_log_probs=precompute, **common)
        return KTOTrainer(model=model, args=args, train_dataset=data, processing_class=tok, peft_config=peft)
    if stage == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        args = ORPOConfig(max_length=4096, **common)
        return ORPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok, peft_config=peft)
    if stage == "simpo":
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        args = CPOConfig(max_length=4096, loss_type="simpo", cpo_alpha=0.0, **common)
        return CPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok, peft_config=peft)
    if stage == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        def length_reward(completions, **kwargs):
            return [float(len(c)) for c in completions]

        # min_new_tokens: EOS is masked until max_completion_length, so every completion has the full length
        args = GRPOConfig(num_generations=num_generations, max_completion_length=completion_len,
                          generation_kwargs={"min_new_tokens": completion_len}, shuffle_dataset=False, **common)
        return GRPOTrainer(model=model, reward_funcs=length_reward, args=args, train_dataset=data,
                           processing_class=tok, peft_config=peft)
    raise ValueError(f"stage {stage!r}: one of {STAGES}")


def _enable_checkpointing(trainer) -> None:
    """What `transformers.Trainer._inner_training_loop` does at the start of `train()` when
    `activation_checkpointing` (TRL's default `gradient_checkpointing=True`) is on; TRL's `__init__` has already
    made a PEFT model's inputs require grad."""
    args = trainer.args
    kwargs = dict(getattr(args, "activation_checkpointing_kwargs", None) or args.gradient_checkpointing_kwargs or {})
    every_n_layers = kwargs.pop("every_n_layers", 1)
    offload = kwargs.pop("offload", False)
    trainer.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs or None,
                                                  every_n_layers=every_n_layers, offload=offload)


def measure_stage(config: dict, stage: str, *, method: str = "full", precision: str = "bf16", batch: int = 2,
                  prompt_len: int = 6, completion_len: int = 8, precompute: bool = False, num_generations: int = 2,
                  beta: float | None = None, gradient_checkpointing: bool = False, seed: int = 0,
                  detail: bool = False) -> dict:
    """One training step of TRL's `stage` trainer on a tiny model: see the module docstring for the fields.
    `detail=True` adds `tensors`: (shape, dtype, storage bytes) of every counted storage, largest first."""
    import torch

    _quiet()
    tok = tokenizer(config)
    size = len(tok)
    rows = batch if stage != "grpo" else max(1, batch // num_generations)
    data = dataset(stage, max(rows, 2), prompt_len, completion_len, size, seed)
    folder = checkpoint(config, precision)
    with tempfile.TemporaryDirectory(prefix="truth-stage-run-", dir=_tmp_root()) as out_dir, \
            warnings.catch_warnings(), _one_thread():
        warnings.simplefilter("ignore")
        torch.manual_seed(seed)
        trainer = _trainer(stage, folder, tok, data, method=method, precision=precision, batch=batch,
                           out_dir=out_dir, precompute=precompute, num_generations=num_generations,
                           completion_len=completion_len, beta=beta, gradient_checkpointing=gradient_checkpointing)
        model = trainer.model
        ref = getattr(trainer, "ref_model", None)
        model.train()
        if gradient_checkpointing:
            _enable_checkpointing(trainer)

        # GRPO: capture the KV cache its own `generate` call builds
        generation: dict = {}
        if stage == "grpo":
            original = model.generate

            def generate(*args, **kwargs):
                out = original(*args, **kwargs, return_dict_in_generate=True)
                prompt = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
                generation["kv_cache"], generation["kv_len"] = _cache_bytes(out.past_key_values)
                generation["generated"] = int(out.sequences.shape[0])
                generation["prompt_len"] = int(prompt.shape[1])
                generation["completion_len"] = int(out.sequences.shape[1] - prompt.shape[1])
                return out.sequences

            model.generate = generate
        batch_in = next(iter(trainer.get_train_dataloader()))
        inputs = trainer._prepare_inputs(batch_in)
        if stage == "grpo":
            del model.generate
        if not hasattr(trainer, "current_gradient_accumulation_steps"):
            trainer.current_gradient_accumulation_steps = 1  # set by the training loop; one micro-batch here

        shapes: list[tuple[tuple[int, ...], bool]] = []

        def record(module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is not None:
                shapes.append((tuple(ids.shape), torch.is_grad_enabled()))

        handle = _backbone(model).register_forward_pre_hook(record, with_kwargs=True)
        exclude = model_storages(model) | (model_storages(ref) if ref is not None else set())
        try:
            with saved_storages(exclude) as saved:
                loss = trainer.compute_loss(model, inputs)
        finally:
            handle.remove()
        loss.backward()  # the saved graph is a real one: backward runs through it
        counted = sorted(((list(t.shape), str(t.dtype).removeprefix("torch."), t.untyped_storage().nbytes())
                          for t in saved.values()), key=lambda x: -x[2]) if detail else None
        saved_bytes = storage_bytes(saved)
        saved.clear()
        trained = [s for s, grad in shapes if grad]
        result = {
            "stage": stage, "method": method, "precision": precision, "model_type": config["model_type"],
            "batch": batch, "rows": trained[0][0] if trained else 0, "seq": trained[0][1] if trained else 0,
            "trained_forwards": len(trained), "no_grad_forwards": len(shapes) - len(trained),
            "saved": saved_bytes,
            "policy_bytes": _param_bytes(model),
            "reference_bytes": _param_bytes(ref, buffers=True) if ref is not None else 0,
            "reference_param_bytes": _param_bytes(ref) if ref is not None else 0,
            "precompute": precompute, "gradient_checkpointing": gradient_checkpointing, "kv_cache": 0,
            "prompt_len": prompt_len, "completion_len": completion_len,  # GRPO: replaced by what generate made
        }
        if detail:
            result["tensors"] = counted
        if stage == "grpo":
            result.update(generation, num_generations=num_generations, beta=trainer.beta)
        if stage == "simpo":
            result["cpo_alpha"] = trainer.cpo_alpha  # 0: no NLL term (cpo_trainer.py)
        del trainer, model, ref, inputs, loss
    return result


def grid(model_types=("llama", "qwen2")) -> list[dict]:
    """Every case `__main__` prints (`python -m tests.planner.truth_stages`): each stage x method x precision,
    plus precomputed reference log-probs, GRPO with a KL term and TRL's default gradient checkpointing."""
    from tests.planner.configs import random_config

    cases = []
    for model_type in model_types:
        config = random_config(model_type, 0, layers=2)
        for stage in STAGES:
            for method in ("full", "lora"):
                for precision in ("fp32", "bf16"):
                    cases.append((config, stage, dict(method=method, precision=precision)))
        if model_type == model_types[0]:
            for stage in ("dpo", "kto"):
                for method in ("full", "lora"):
                    cases.append((config, stage, dict(method=method, precision="bf16", precompute=True)))
            for method in ("full", "lora"):
                cases.append((config, "grpo", dict(method=method, precision="bf16", beta=0.04)))
            for stage in STAGES:  # TRL's default: gradient_checkpointing=True
                cases.append((config, stage, dict(method="full", precision="bf16", gradient_checkpointing=True)))
    return [measure_stage(config, stage, **kw) for config, stage, kw in cases]


if __name__ == "__main__":
    import time

    start = time.perf_counter()
    for row in grid():
        print(json.dumps(row))
    print(json.dumps({"seconds": round(time.perf_counter() - start, 1)}))
