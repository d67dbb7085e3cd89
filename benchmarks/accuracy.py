"""Compare ftplan's totals with published *measured* peak memory, and with two rules of thumb.

    python benchmarks/accuracy.py            # prints the page
    python benchmarks/accuracy.py --write    # also rewrites docs/accuracy.md

Rows come from benchmarks/published_measurements.yaml (each with its source, the settings as
published, a `confidence` and an `unmodelled` list: what the run used that ftplan does not
model, read from the row's notes). The headline's rows are chosen by one rule over that data,
`in_headline` below, which docs/accuracy.md prints as written; no row is chosen by its id.

For each row we compute the number that is comparable to what was measured: our allocated
peak for `max_memory_allocated` / "peak active", plus fragmentation for `max_memory_reserved`,
and the full total (with the CUDA context) for nvidia-smi or an unknown tool. Paged optimizers
keep their state in CUDA unified memory, outside PyTorch's allocator, so torch's statistics do
not see it and neither does our comparable number for those rows.

The rules of thumb, for full fine-tuning rows only:
* the seed notes' 17.5x: 17.5 bytes per parameter (2 weights + 4 gradients + 8 Adam
  + 2 activations + 1.5 framework);
* `accelerate estimate-memory`'s "Training using Adam": the largest single component,
  4x the fp32 model size for fp32 and 2x for mixed precision (accelerate/commands/estimate.py).
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from planner.files import write_text_atomic  # noqa: E402
from planner.plan import Plan  # noqa: E402
from planner.service import plan_run  # noqa: E402
from planner.spec import ModelSpec, load_spec, spec_from_config  # noqa: E402
from planner.units import GIB  # noqa: E402

DATA = ROOT / "benchmarks" / "published_measurements.yaml"

# Published model -> a preset, or the config of an architecture-identical model.
MODELS: dict[str, str | dict] = {
    "meta-llama/Llama-3.1-8B-Instruct": "llama-3.1-8b",
    "meta-llama/Meta-Llama-3-8B": "llama-3.1-8b",
    "meta-llama/Llama-3.2-3B-Instruct": "llama-3.2-3b",
    "meta-llama/Llama-2-7b-hf": "llama-2-7b",
    "meta-llama/Llama-2-7b": "llama-2-7b",
    "meta-llama/Llama-2-70b-hf": "llama-2-70b",
    "Qwen/Qwen2-7B-Instruct": "qwen2.5-7b-instruct",  # same shapes as Qwen2.5-7B
    "Qwen/Qwen2.5-7B-Instruct": "qwen2.5-7b-instruct",
    "Qwen/Qwen3-8B": "qwen3-8b",
    "mistralai/Mistral-7B-v0.1": "mistral-7b-v0.1",
    "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T": {
        "model_type": "llama", "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
        "num_attention_heads": 32, "num_key_value_heads": 4, "vocab_size": 32000, "max_position_embeddings": 2048},
    # Qwen (v1) is remote code; as a qwen2 config it has the same shapes (c_attn with bias, w1/w2 = up/gate)
    "Qwen/Qwen-7B-Chat": {"model_type": "qwen2", "hidden_size": 4096, "intermediate_size": 11008,
                          "num_hidden_layers": 32, "num_attention_heads": 32, "vocab_size": 151936},
    "Qwen/Qwen-14B-Chat": {"model_type": "qwen2", "hidden_size": 5120, "intermediate_size": 13696,
                           "num_hidden_layers": 40, "num_attention_heads": 40, "vocab_size": 152064},
    "Qwen/Qwen-1_8B": {"model_type": "qwen2", "hidden_size": 2048, "intermediate_size": 5504,
                       "num_hidden_layers": 24, "num_attention_heads": 16, "vocab_size": 151936},
}


TORCHTUNE_TARGETS = {"output_proj": "o_proj", "mlp": "gate_proj,up_proj,down_proj"}

# What tests/planner/test_published.py holds the headline rows to (docs/accuracy.md prints it).
BOUNDS = {"rows": 8, "mean": 0.10, "median": 0.10, "worst": 0.20}


def in_headline(row: dict) -> bool:
    """A published row counts towards the headline when it was measured and its run used nothing
    ftplan does not model: its `unmodelled` list in the YAML is empty."""
    return row["kind"] == "measured" and not row["unmodelled"]


def exclusions(row: dict) -> list[str]:
    """Why `in_headline` leaves a row out, in the YAML's words (empty for a headline row)."""
    return ([] if row["kind"] == "measured" else ["an estimate, not a measurement"]) + list(row["unmodelled"])


def load_rows() -> list[dict]:
    return yaml.safe_load(DATA.read_text(encoding="utf-8"))


@dataclass
class Row:
    id: str
    source: str
    confidence: str
    measured: float  # bytes, as published
    setting: str | None  # None: no estimate (see `no_estimate`)
    ours: float | None
    quantity: str | None  # allocated / reserved / total: what `ours` is comparable with
    rule_17_5: float | None
    accelerate: float | None
    headline: bool
    reasons: list[str]  # `exclusions`: why the row is left out of the headline
    no_estimate: str | None = None

    @property
    def error(self) -> float | None:
        return None if self.ours is None else (self.ours - self.measured) / self.measured


def _spec(model: str) -> ModelSpec | None:
    found = MODELS.get(model)
    if found is None:
        return None
    return load_spec(found) if isinstance(found, str) else spec_from_config(found, source=model, name=model)


def _bytes(value: float, unit: str) -> float:
    unit = unit.strip()
    if unit == "bytes":
        return value
    if unit == "GB":
        return value * 1e9
    return value * GIB  # GiB, and Qwen's "G" (torch's /1024**3 convention)


def _lora_target(raw) -> str:
    if raw == ["all-linear"]:
        return "all-linear"  # peft's expansion, as TRL/axolotl pass it
    if not raw or raw == "unknown":
        return "all"
    names = []
    for name in raw:
        if name in ("c_attn", "c_proj", "w1", "w2"):
            return "all"
        if name == "output":
            continue  # LoRA on the LM head: not modelled (a few MB)
        names.append(TORCHTUNE_TARGETS.get(name, name))
    return ",".join(names)


def _plan(r: dict) -> Plan:
    optimizer = r["optimizer"]
    optimizer = {"paged-adamw-32bit": "paged-adamw", "unknown": "adamw"}.get(optimizer, optimizer)
    zero = r.get("zero")
    zero = 3 if zero == "fsdp-full-shard" else int(zero or 0)
    precision = {"fp16": "fp16-mixed"}.get(r["precision"], r["precision"])
    method = r["method"]
    fields = dict(
        method=method, precision=precision, optimizer=optimizer, batch_size=int(r["batch_size"]),
        seq_len=int(r["seq_len"]), gradient_checkpointing=bool(r["gradient_checkpointing"]),
        attention="sdpa" if r["attention"] in ("unknown", None) else r["attention"], gpus=int(r["gpus"]),
        zero=zero, offload_optimizer=bool(r.get("offload_optimizer")) and zero > 0,
        optimizer_in_backward=bool(r.get("optimizer_in_backward")),
    )
    if method in ("lora", "qlora"):
        rank = r.get("lora_rank")
        fields.update(lora_rank=int(rank) if rank not in (None, "unknown") else 8,
                      lora_target=_lora_target(r.get("lora_target")))
    if method == "qlora":
        fields["quant_bits"] = int(r.get("quant_bits") or 4)
    # alignment rows: the stage and its generation settings, and a fused loss (Liger) where the run used one
    # and the recipe settings a row records where it used them (a base loaded in another dtype, Liger's kernels,
    # activation offloading)
    fields.update({key: r[key] for key in ("stage", "num_generations", "max_completion_len", "fused_loss",
                                           "weights_dtype", "liger_kernels", "activation_offload")
                   if r.get(key) is not None})
    return Plan.build(**fields)


def _comparable(r: dict, result) -> tuple[float, str]:
    mem, machine = result.memory, result.machine
    measurement = str(r.get("measurement", "unknown")).lower()
    allocated = mem.peak_allocated
    if r["optimizer"].startswith("paged") and "nvidia-smi" not in measurement:
        allocated -= mem.peak["optimizer"]  # unified memory: invisible to torch.cuda statistics
    if "active" in measurement or "allocated" in measurement:
        return allocated, "allocated"
    if "reserved" in measurement:
        return allocated * (1 + machine.fragmentation), "reserved"
    return allocated * (1 + machine.fragmentation) + machine.context_bytes, "total"


def _no_estimate(r: dict) -> str | None:
    if r["kind"] != "measured":
        return "an estimate, not a measurement"
    if r["model"] not in MODELS:
        return f"`{r['model']}` is not in the benchmark's model map (MODELS)"
    if not r.get("seq_len"):
        return "sequence length not published"
    return None


def _setting(r: dict, plan: Plan) -> str:
    return (f"{r['model'].split('/')[-1]} {plan.method}"
            + (f" r{plan.lora_rank}" if plan.method in ("lora", "qlora") else "")
            + (f" {plan.stage}" if plan.stage != "sft" else "")
            + f", {plan.precision}, {plan.optimizer}, b{plan.batch_size}×{plan.seq_len}"
            + (", GC" if plan.gradient_checkpointing else "")
            + (", optimizer in backward" if plan.optimizer_in_backward else "")
            + (f", {plan.gpus} GPUs ZeRO-{plan.zero}" if plan.gpus > 1 else "")
            + f", {r['gpu']}")


def compare(rows: list[dict] | None = None) -> list[Row]:
    """Every published row, in the YAML's order, with our comparable number where one can be made."""
    out: list[Row] = []
    for r in load_rows() if rows is None else rows:
        base = dict(id=r["id"], source=r["source"], confidence=r["confidence"],
                    measured=_bytes(float(r["measured"]), r["unit"]), headline=in_headline(r),
                    reasons=exclusions(r))
        why = _no_estimate(r)
        if why:
            out.append(Row(**base, setting=None, ours=None, quantity=None, rule_17_5=None, accelerate=None,
                           no_estimate=why))
            continue
        plan = _plan(r)
        result = plan_run(_spec(r["model"]), plan)
        ours, quantity = _comparable(r, result)
        params = result.params.total
        full = r["method"] == "full"
        out.append(Row(**base, setting=_setting(r, plan), ours=ours, quantity=quantity,
                       rule_17_5=17.5 * params if full else None,
                       accelerate=(16 if r["precision"] == "fp32" else 8) * params if full else None))
    return out


@dataclass
class Summary:
    rows: int
    mean: float  # of |error|
    median: float  # of |error|
    worst: float  # the signed error largest in size
    worst_id: str


def summarise(rows: list[Row]) -> Summary | None:
    errors = [(abs(r.error), r.error, r.id) for r in rows if r.error is not None]
    if not errors:
        return None
    worst = max(errors)
    return Summary(rows=len(errors), mean=statistics.mean(e[0] for e in errors),
                   median=statistics.median(e[0] for e in errors), worst=worst[1], worst_id=worst[2])


def _err(value: float | None, measured: float) -> str:
    if value is None:
        return "–"
    return f"{value / GIB:.1f} ({(value - measured) / measured:+.0%})"


def _summary_line(label: str, s: Summary | None) -> str:
    if s is None:
        return f"| {label} | 0 | – | – | – |"
    return f"| {label} | {s.rows} | {s.mean:.1%} | {s.median:.1%} | {s.worst:+.1%} (`{s.worst_id}`) |"


EXACT = """\
## What is exact and what is within a tolerance

Each line is checked by a test in `tests/planner/` whose truth is the library itself (models built
with literal transformers / peft / bitsandbytes / torch calls), never ftplan's own helpers.

| quantity | checked against | agreement | test |
| --- | --- | --- | --- |
| parameter counts, total and per layer | transformers models on the meta device, 18 model types (llama, mistral, mixtral, qwen2/3 and their MoE, gemma 1-3, phi3, olmo2, starcoder2, granite, gpt2, gpt_neox, falcon, deepseek_v3) | exact | `test_params.py` |
| LoRA trainable parameters | peft `get_peft_model` on the same types: all-linear, attention and MLP targets, ranks 4 and 16; LLaMA-Factory's `all` (find_all_linear_modules) per model type | exact | `test_methods_truth.py` |
| QLoRA trainable parameters and weight bytes (4-bit storage, absmax, nested quantization state) | a real bitsandbytes 4-bit model: llama, qwen2, mixtral, phi3, double quantization on and off | exact | `test_methods_truth.py` |
| DDP gradient buckets | the bucket sizes `DistributedDataParallel` reports | exact | `test_methods_truth.py` |
| activations and logits saved for backward | the bytes autograd saves (`saved_tensors_hooks`) on small real CPU models: eager and SDPA, bf16 and fp32, full / freeze / LoRA / QLoRA | over the test's grid, llama, qwen2, mixtral, gemma: under 0.01%; phi3: 0.01% eager, 3-4.4% low with SDPA. The test holds every case to 10% (2% under bf16 autocast, 1% with gradient checkpointing) | `test_activation_truth.py` |
| optimizer state | the bytes in `optimizer.state` after a real step: torch AdamW (foreach and fused), SGD with and without momentum, transformers' Adafactor, bitsandbytes AdamW8bit and PagedAdamW8bit as the HF Trainer builds them; full, LoRA, fp32 and pure bf16 | exact (the per-tensor `step` scalars aside) | `test_optimizer_truth.py` |
| ZeRO-sharded model states | DeepSpeed's own estimators (`estimate_zero2/3_model_states_mem_needs`), 4 families, 1/2/8 GPUs | exact within 4 bytes | `test_zero_truth.py` |
| training FLOPs per step | `torch.utils.flop_counter.FlopCounterMode`, forward + backward (+ recompute under checkpointing): full, freeze, LoRA, MoE | within 0.4% | `test_flops_truth.py` |
| alignment stages: saved bytes, reference model, policy weights, KV cache | TRL 1.16's own trainers on CPU (DPOTrainer, KTOTrainer, RewardTrainer, experimental ORPOTrainer and CPOTrainer as SimPO with cpo_alpha 0, GRPOTrainer, each as a TRL user builds it, one batch from its own dataloader): llama and qwen2, full and LoRA, fp32 and bf16, with checkpointing, precomputed reference log-probs and a GRPO KL beta | saved bytes: 39 cases, worst 0.9%, mean 0.1% (`benchmarks/stage_truth.py`); reference and policy weights exact; GRPO's KV cache exact (also exact against `generate` in `test_stages.py`); a reward model's parameters exact against `AutoModelForSequenceClassification` | `test_stage_truth.py`, `test_stages.py` |
| one whole training step's allocated peak | `ftplan trace`: the real transformers/peft step on fake tensors (equal to real CPU tensors byte for byte; gradient sums counted in place where autograd, without the trace's dispatch mode, sums in place) | full fine-tuning and LoRA, with and without checkpointing, at 1B-70B and Mixtral: within 0.03% (`benchmarks/bench_trace.py`); the backward's peak where the step has it (the loss, the last block's backward or the embedding's gradient, tied heads included): exact to 1 MiB, the last block's in-flight gradients within 10% of their bytes | `tests/diagnostics/test_trace.py` |
| peak memory of a whole run | published measurements (this page) | headline rows: {headline} | `test_published.py` |
"""


def render(rows: list[Row]) -> str:
    estimated = [r for r in rows if r.ours is not None]
    headline = [r for r in estimated if r.headline]
    top = summarise(headline)
    full_headline = [r for r in headline if r.confidence == "full"]
    full_rows = [r for r in estimated if r.rule_17_5]
    bounds = (f"at least {BOUNDS['rows']} rows, mean absolute error at most {BOUNDS['mean']:.0%}, median at "
              f"most {BOUNDS['median']:.0%}, worst at most {BOUNDS['worst']:.0%}")
    top_text = (f"mean absolute error **{top.mean:.1%}**, median **{top.median:.1%}**, worst **{top.worst:+.1%}**"
                if top else "no rows")
    lines = [
        "# Accuracy: ftplan against published measured peak memory",
        "",
        "Generated by `python benchmarks/accuracy.py --write` from `benchmarks/published_measurements.yaml`",
        "(each row's settings, unit and measuring tool as published, with the source). GiB = 2^30 bytes.",
        "",
        "*ours* is the number comparable to what was measured: our allocated peak for",
        "`max_memory_allocated` / torchtune's *peak active*, plus allocator fragmentation for",
        "`max_memory_reserved`, plus the CUDA context for nvidia-smi or an unknown tool. The rules of",
        "thumb apply to full fine-tuning only: the seed notes' **17.5 bytes per parameter**, and",
        "**accelerate** `estimate-memory`'s *Training using Adam* (its largest single component).",
        "",
        f"**Headline**: over the {len(headline)} rows the rule below selects (of {len(estimated)} with an "
        f"estimate), {top_text}.",
        "",
        "## Which rows make the headline",
        "",
        "Each row in the YAML lists, under `unmodelled`, what its run used that ftplan does not model or",
        "why its figure is not a training peak ftplan reproduces (torch.compile, chunked cross-entropy,",
        "activation or parameter offloading, dynamic padding, paged optimizer state, a peak at model load,",
        "...), read from the row's source notes. The headline is every row this function, in",
        "`benchmarks/accuracy.py`, accepts:",
        "",
        "```python",
        inspect.getsource(in_headline).rstrip(),
        "```",
        "",
        "`confidence` is not part of the rule: *full* means every setting is stated in the source, and",
        f"requiring it would leave the headline {len(full_headline)} of its {len(headline)} rows; it is reported",
        "beside each row and in its own lines below.",
        "Dynamically padded runs are all left out: their peak falls on the longest batch, at or below the",
        "cap ftplan is given.",
        "",
        f"`tests/planner/test_published.py` holds the headline to {bounds}.",
        "",
        "| rows | n | mean abs. error | median abs. error | worst |",
        "| --- | ---: | ---: | ---: | --- |",
        _summary_line("headline (`in_headline`)", top),
        _summary_line("headline, confidence full", summarise(full_headline)),
        _summary_line("every row with an estimate", summarise(estimated)),
        _summary_line("every row with an estimate, confidence full",
                      summarise([r for r in estimated if r.confidence == "full"])),
        "",
        "## Every row",
        "",
        "| row | confidence | setting | measured GiB | ours GiB (error) | 17.5x rule | accelerate "
        "| left out of the headline because |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in estimated:
        lines.append(
            f"| [{r.id}]({r.source}) | {r.confidence} | {r.setting} | {r.measured / GIB:.1f} "
            f"| {_err(r.ours, r.measured)} | {_err(r.rule_17_5, r.measured)} | {_err(r.accelerate, r.measured)} "
            f"| {', '.join(r.reasons) or '– (in the headline)'} |")
    lines += ["", "On the full fine-tuning rows the 17.5x rule is off by "
              + ", ".join(f"{(r.rule_17_5 - r.measured) / r.measured:+.0%}" for r in full_rows)
              + " and accelerate by "
              + ", ".join(f"{(r.accelerate - r.measured) / r.measured:+.0%}" for r in full_rows)
              + ": neither sees batch, sequence, precision mode, checkpointing or the optimizer.",
              "", "## Rows without an estimate", ""]
    lines += [f"- `{r.id}`: {r.no_estimate}" + (f"; unmodelled: {', '.join(r.reasons)}"
                                                   if r.reasons and r.reasons != [r.no_estimate] else "")
              for r in rows if r.ours is None]
    lines += ["", EXACT.format(headline=top_text.replace("**", "")).rstrip(), "",
              "Caveats: torchtune and LitGPT run their own model code (not transformers), with LoRA",
              "adapters in bf16; a few rows' GPU or tool is unknown (their `confidence` is *partial*). See",
              "each row's `notes` in the YAML."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="rewrite docs/accuracy.md")
    args = parser.parse_args()
    text = render(compare())
    print(text, end="")
    if args.write:
        write_text_atomic(ROOT / "docs" / "accuracy.md", text)


if __name__ == "__main__":
    main()
