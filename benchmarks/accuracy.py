"""Compare ftplan's totals with published *measured* peak memory, and with two rules of thumb.

    python benchmarks/accuracy.py            # prints the table
    python benchmarks/accuracy.py --write    # also rewrites docs/accuracy.md

Rows come from benchmarks/published_measurements.yaml (each with its source and the
settings as published). For each row we compute the number that is comparable to
what was measured: our allocated peak for `max_memory_allocated` / "peak active",
plus fragmentation for `max_memory_reserved`, and the full total (with the CUDA
context) for nvidia-smi or an unknown tool. Paged optimizers keep their state in
CUDA unified memory, outside PyTorch's allocator, so torch's statistics do not see
it and neither does our comparable number for those rows.

The rules of thumb, for full fine-tuning rows only:
* the seed notes' 17.5x: 17.5 bytes per parameter (2 weights + 4 gradients + 8 Adam
  + 2 activations + 1.5 framework);
* `accelerate estimate-memory`'s "Training using Adam": the largest single component,
  4x the fp32 model size for fp32 and 2x for mixed precision (accelerate/commands/estimate.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from planner.estimate import estimate  # noqa: E402
from planner.files import write_text_atomic  # noqa: E402
from planner.plan import Plan  # noqa: E402
from planner.spec import ModelSpec, load_spec, spec_from_config  # noqa: E402
from planner.units import GIB  # noqa: E402

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

# What a run used that ftplan does not model, or why its peak is not a training peak, by row id.
# torchtune's "Optimization flags" table is cumulative: each row adds one flag to the row above.
_COMPILE_CE = "torch.compile, chunked cross-entropy"
UNMODELLED = {
    "torchtune-llama3.1-8b-full-single-4090": "torch.compile",
    "torchtune-llama3.1-8b-lora-single-4090": "torch.compile; LoRA rank/targets not pinned",
    "torchtune-llama3.1-8b-qlora-single-4090": _COMPILE_CE,
    "torchtune-llama3.2-3b-full-baseline-unpacked": "unpacked Alpaca: real lengths far below the 4096 cap",
    "torchtune-llama3.2-3b-full-packed-compile": "torch.compile",
    "torchtune-llama3.2-3b-full-packed-compile-chunkedce": _COMPILE_CE,
    "torchtune-llama3.2-3b-full-packed-compile-chunkedce-ac": _COMPILE_CE,
    "torchtune-llama3.2-3b-full-packed-ac-optinbwd": _COMPILE_CE,
    "torchtune-llama3.2-3b-full-packed-ac-optinbwd-actoffload": _COMPILE_CE + ", activation offloading",
    "torchtune-llama3.2-3b-full-packed-all-8bit-adamw": _COMPILE_CE + ", activation offloading",
    "torchtune-llama3.2-3b-lora-packed-all": _COMPILE_CE + ", activation offloading",
    "torchtune-llama3.2-3b-qlora-packed-all": _COMPILE_CE + ", activation offloading",
    "torchtune-llama2-7b-qlora-single": "peak reserved is set at model load (9.13 GB reserved before training)",
    "litgpt-llama2-7b-qlora-a10g": "peak at load: the bf16 checkpoint is on the GPU before quantization",
    "litgpt-llama3-8b-qlora-a10g": "peak at load: the bf16 checkpoint is on the GPU before quantization",
    "peft-docs-llama2-70b-qlora-fsdp-cpu-offload-2gpu": "FSDP parameter offloading",
    "peft-docs-llama2-70b-lora-fsdp-8xh100": "read off nvidia-smi near the 80 GB ceiling (allocator cache)",
    "swift-qwen2.5-7b-qlora-bnb-single": "short samples padded dynamically; the 2048 cap is rarely reached",
    "swift-qwen2.5-7b-qlora-fsdp-offload-2gpu": "FSDP offloading; short samples, dynamic padding",
}

TORCHTUNE_TARGETS = {"output_proj": "o_proj", "mlp": "gate_proj,up_proj,down_proj"}


@dataclass
class Row:
    id: str
    source: str
    setting: str
    measured: float  # bytes
    ours: float | None
    rule_17_5: float | None
    accelerate: float | None
    quantity: str
    notes: str
    clean: bool  # nothing unmodelled: counts towards the error statistics


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
    if not raw or raw == "unknown" or raw == ["all-linear"]:
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
    optimizer = {"paged-adamw-32bit": "adamw", "unknown": "adamw"}.get(optimizer, optimizer)
    zero = r.get("zero")
    zero = 3 if zero == "fsdp-full-shard" else int(zero or 0)
    precision = {"fp16": "fp16-mixed"}.get(r["precision"], r["precision"])
    method = r["method"]
    fields = dict(
        method=method, precision=precision, optimizer=optimizer, batch_size=int(r["batch_size"]),
        seq_len=int(r["seq_len"]), gradient_checkpointing=bool(r["gradient_checkpointing"]),
        attention="sdpa" if r["attention"] in ("unknown", None) else r["attention"], gpus=int(r["gpus"]),
        zero=zero, offload_optimizer=bool(r.get("offload_optimizer")) and zero > 0,
        optimizer_in_backward="optinbwd" in r["id"] or r["id"].startswith(("torchtune-llama3.1-8b-full",
                                                                             "torchtune-llama2-7b-full")),
    )
    if method in ("lora", "qlora"):
        rank = r.get("lora_rank")
        fields.update(lora_rank=int(rank) if rank not in (None, "unknown") else 8,
                      lora_target=_lora_target(r.get("lora_target")))
    if method == "qlora":
        fields["quant_bits"] = int(r.get("quant_bits") or 4)
    return Plan.build(**fields)


def _comparable(r: dict, result) -> tuple[float, str]:
    mem = result.memory
    measurement = str(r.get("measurement", "unknown")).lower()
    allocated = mem.peak_allocated
    if r["optimizer"].startswith("paged") and "nvidia-smi" not in measurement:
        allocated -= mem.optimizer  # unified memory: invisible to torch.cuda statistics
    if "active" in measurement or "allocated" in measurement:
        return allocated, "allocated"
    if "reserved" in measurement:
        return allocated * (1 + result.plan.fragmentation), "reserved"
    return allocated * (1 + result.plan.fragmentation) + mem.details["cuda_context"], "total"


def compare() -> tuple[list[Row], list[tuple[str, str]]]:
    rows = yaml.safe_load((ROOT / "benchmarks" / "published_measurements.yaml").read_text(encoding="utf-8"))
    out: list[Row] = []
    skipped: list[tuple[str, str]] = []
    for r in rows:
        if r["kind"] != "measured":
            skipped.append((r["id"], "an estimate, not a measurement"))
            continue
        spec = _spec(r["model"])
        if spec is None:
            skipped.append((r["id"], f"{r['model']}: architecture not modelled (encoder-decoder or BLOOM)"))
            continue
        if not r.get("seq_len"):
            skipped.append((r["id"], "sequence length not published"))
            continue
        if "gptq" in r["id"]:
            skipped.append((r["id"], "GPTQ int4 weights are not modelled"))
            continue
        plan = _plan(r)
        result = estimate(spec, plan)
        ours, quantity = _comparable(r, result)
        params = result.params.total
        full = r["method"] == "full"
        notes = [UNMODELLED[r["id"]]] if r["id"] in UNMODELLED else []
        clean = not notes
        if r["optimizer"].startswith("paged"):
            notes.append("paged optimizer state excluded (outside PyTorch's allocator)")
        if plan.optimizer_in_backward:
            notes.append("optimizer in backward")
        if "dynamic" in str(r.get("seq_len_note", "")) or "NOT packed" in str(r.get("seq_len_note", "")):
            notes.append("dynamic padding: peak taken at the cap")
        setting = (f"{r['model'].split('/')[-1]} {plan.method}"
                   + (f" r{plan.lora_rank}" if plan.method in ("lora", "qlora") else "")
                   + f", {plan.precision}, {plan.optimizer}, b{plan.batch_size}×{plan.seq_len}"
                   + (", GC" if plan.gradient_checkpointing else "")
                   + (f", {plan.gpus} GPUs ZeRO-{plan.zero}" if plan.gpus > 1 else "")
                   + f", {r['gpu']}")
        out.append(Row(
            id=r["id"], source=r["source"], setting=setting, measured=_bytes(float(r["measured"]), r["unit"]),
            ours=ours, quantity=quantity,
            rule_17_5=17.5 * params if full else None,
            accelerate=(16 if r["precision"] == "fp32" else 8) * params if full else None,
            notes="; ".join(notes), clean=clean,
        ))
    return out, skipped


def _err(value: float | None, measured: float) -> str:
    if value is None:
        return "–"
    return f"{value / GIB:.1f} ({(value - measured) / measured:+.0%})"


def render(rows: list[Row], skipped: list[tuple[str, str]]) -> str:
    clean = [r for r in rows if r.clean]
    errors = [abs(r.ours - r.measured) / r.measured for r in clean]
    full_rows = [r for r in rows if r.rule_17_5]
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
        f"Rows whose run used nothing ftplan does not model: **{len(clean)}** of {len(rows)}; mean absolute error "
        f"**{statistics.mean(errors):.0%}**, median **{statistics.median(errors):.0%}**, "
        f"worst **{max(errors):.0%}**." if errors else "",
        "",
        "| row | setting | measured GiB | ours GiB (error) | 17.5x rule | accelerate | not modelled / notes |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        lines.append(
            f"| [{r.id}]({r.source}) | {r.setting} | {r.measured / GIB:.1f} | {_err(r.ours, r.measured)} "
            f"| {_err(r.rule_17_5, r.measured)} | {_err(r.accelerate, r.measured)} | {r.notes or '–'} |")
    lines += ["", "On the full fine-tuning rows the 17.5x rule is off by "
              + ", ".join(f"{(r.rule_17_5 - r.measured) / r.measured:+.0%}" for r in full_rows)
              + " and accelerate by "
              + ", ".join(f"{(r.accelerate - r.measured) / r.measured:+.0%}" for r in full_rows)
              + ": neither sees batch, sequence, precision mode, checkpointing or the optimizer.",
              "", "Rows left out:", ""]
    lines += [f"- `{rid}`: {why}" for rid, why in skipped]
    lines += ["", "Caveats: torchtune and LitGPT run their own model code (not transformers), with LoRA",
              "adapters in bf16; dynamically padded runs peak at their longest batch, taken here as the",
              "cap; a few rows' GPU or tool is unknown. See each row's `notes` in the YAML."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="rewrite docs/accuracy.md")
    args = parser.parse_args()
    rows, skipped = compare()
    text = render(rows, skipped)
    print(text)
    if args.write:
        write_text_atomic(ROOT / "docs" / "accuracy.md", text)


if __name__ == "__main__":
    main()
