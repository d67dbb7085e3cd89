"""Houlsby adapters: ftplan's trainable count against the `adapters` library's own (AdapterHub).

The library pins transformers ~4.57, so this runs in its own environment, not in CI (which checks the count
against a construction written from the paper, tests/planner/test_peft_methods_truth.py):

    python3 -m venv /tmp/advenv && . /tmp/advenv/bin/activate
    pip install torch==2.13.0 adapters pydantic pyyaml
    python benchmarks/adapters_counts.py --write   # from the repository root; rewrites docs/adapters_counts.md

For each family and reduction factor it builds a tiny random model from a config, adds the library's
`DoubleSeqBnConfig` (Houlsby et al. 2019: a bottleneck after the attention and after the feed-forward block of
every layer) with that reduction factor, trains only the adapter (`model.train_adapter`), and counts the
parameters that require grad; ftplan's planner (pure Python: no transformers import) counts the same plan.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from planner.files import write_text_atomic  # noqa: E402

FAMILIES = {
    "llama": dict(model_type="llama", hidden_size=64, intermediate_size=176, num_attention_heads=4,
                  num_key_value_heads=2, num_hidden_layers=2, vocab_size=256),
    "mistral": dict(model_type="mistral", hidden_size=96, intermediate_size=256, num_attention_heads=4,
                    num_key_value_heads=2, num_hidden_layers=3, vocab_size=300),
    "qwen2": dict(model_type="qwen2", hidden_size=128, intermediate_size=320, num_attention_heads=8,
                  num_key_value_heads=2, num_hidden_layers=2, vocab_size=512),
    "gemma": dict(model_type="gemma", hidden_size=64, intermediate_size=192, num_attention_heads=4,
                  num_key_value_heads=1, head_dim=16, num_hidden_layers=2, vocab_size=256),
    "gpt2": dict(model_type="gpt2", n_embd=64, n_head=4, n_layer=2, vocab_size=256, n_positions=128),
}
REDUCTIONS = (4, 16)


def library_count(config: dict, reduction: int) -> int:
    import adapters
    from transformers import AutoConfig, AutoModelForCausalLM

    hf = AutoConfig.for_model(**config)
    model = AutoModelForCausalLM.from_config(hf)
    adapters.init(model)
    model.add_adapter("houlsby", config=adapters.DoubleSeqBnConfig(reduction_factor=reduction))
    model.train_adapter("houlsby")
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def ftplan_count(config: dict, reduction: int) -> int:
    from planner.methods import layout
    from planner.params import count_params
    from planner.plan import Plan
    from planner.spec import spec_from_config

    spec = spec_from_config(config, source="benchmark")
    return layout(spec, count_params(spec), Plan(method="adapter", adapter_reduction=reduction)).trainable_params


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite docs/adapters_counts.md")
    args = parser.parse_args()
    import adapters
    import transformers

    transformers.logging.set_verbosity_error()  # "adapters available but none are activated": we only count
    rows = []
    for family, config in FAMILIES.items():
        for reduction in REDUCTIONS:
            try:
                theirs: int | str = library_count(dict(config), reduction)
            except Exception as exc:  # a family the library does not support
                theirs = f"not supported ({type(exc).__name__})"
            ours = ftplan_count(dict(config), reduction)
            same = "n/a" if isinstance(theirs, str) else "yes" if theirs == ours else "no"
            rows.append(f"| {family} | {reduction} | {theirs} | {ours} | {same} |")
    text = "\n".join([
        "# Houlsby adapters: ftplan against the `adapters` library",
        "",
        "Written by `benchmarks/adapters_counts.py --write` (adapters "
        f"{adapters.__version__}, transformers {transformers.__version__}); trainable parameters of "
        "`DoubleSeqBnConfig(reduction_factor=R)` on tiny random models.",
        "",
        "| family | R | adapters library | ftplan | equal |",
        "|---|---|---|---|---|",
        *rows, ""])
    print(text)
    if args.write:
        write_text_atomic(ROOT / "docs" / "adapters_counts.md", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
