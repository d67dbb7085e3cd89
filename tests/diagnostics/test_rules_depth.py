"""Gradient norms over depth, with the profile built here: a geometric decay, a reverse profile, a flat one.

Synthetic records give the rule exact profiles; real runs give it a decay built into a model with gradient
hooks (block i's gradients times 10^(-2.7 (L-1-i)/(L-1)): the truth is the construction) and a broken init
(std 1.0 instead of 0.02), whose control is the same model at 0.02.
"""

from __future__ import annotations

import json
import math
import random

from diagnostics.loop import run
from diagnostics.report import DiagnoseSettings, StepRecord
from diagnostics.rules import advise, analyze
from planner.plan import Plan


def profile_records(log_norms, steps=8, jitter=0.05, seed=0, first_loss=3.0):
    rng = random.Random(seed)
    out = []
    for s in range(steps):
        layers = {f"block.{i}": 10 ** (v + rng.gauss(0, jitter)) for i, v in enumerate(log_norms)}
        out.append(StepRecord(step=s + 1, loss=first_loss - 0.05 * s, lr=1e-5, grad_norm=1.0, clipped=False,
                              layer_norms=layers, kind_norms={}))
    return out


def findings(recs, **kw):
    return {f.code: f for f in analyze(recs, DiagnoseSettings(model="x"), **kw)}


def geometric(orders, blocks=24):
    """log10 norms falling `orders` from the last block to the first, evenly per block."""
    return [-orders * (blocks - 1 - i) / (blocks - 1) for i in range(blocks)]


def test_a_geometric_decay_of_2_7_orders_is_vanishing_and_1_5_is_not() -> None:
    found = findings(profile_records(geometric(2.7)))
    finding = found["vanishing_gradients"]
    assert finding.data["low_blocks"] == []  # no block is 1e-3 below the median: the old rule missed this
    assert 2.4 < finding.data["gap"] < 2.8 and finding.data["consistency"] > 0.9
    assert abs(finding.data["slope"] - 2.7 / 23) < 0.01
    assert "vanishing_gradients" not in findings(profile_records(geometric(1.5)))


def test_deep_flat_and_noisy_profiles_raise_nothing() -> None:
    """A healthy deep pre-LN profile: flat within a few tenths of an order, block to block at random."""
    rng = random.Random(3)
    flat = [rng.uniform(-0.4, 0.4) for _ in range(32)]
    assert not {"vanishing_gradients", "reversed_depth_profile"} & set(findings(profile_records(flat)))
    # one odd first block two orders down is no slope (and not 1e-3 below the median either)
    odd = [-2.0] + [0.0] * 23
    assert not {"vanishing_gradients", "reversed_depth_profile"} & set(findings(profile_records(odd)))


def test_isolated_dead_blocks_are_still_named() -> None:
    found = findings(profile_records([0.0, -5.0, -5.0, 0.0, 0.0, 0.0]))
    assert found["vanishing_gradients"].data["low_blocks"] == ["block.1", "block.2"]


def test_a_reverse_profile_is_an_init_problem_with_the_first_loss_as_evidence() -> None:
    reverse = list(reversed(geometric(3.0)))
    vocab = 300
    recs = profile_records(reverse, first_loss=5 * math.log(vocab))
    found = findings(recs, vocab_size=vocab)
    finding = found["reversed_depth_profile"]
    assert "vanishing_gradients" not in found
    assert "5.0x ln(vocab) = 5.7" in finding.evidence and "initializer_range" in finding.fix
    assert "block 0's gradient norm is" in finding.evidence
    # a reverse profile with a sane first loss says the output scale is fine
    sane = findings(profile_records(reverse, first_loss=math.log(vocab)), vocab_size=vocab)
    assert "the output scale is sane" in sane["reversed_depth_profile"].evidence


def _hook_decay(orders):
    def prepare(model):
        names = [n for n, _ in model.named_parameters()]
        blocks = 1 + max(int(n.split(".layers.")[1].split(".")[0]) for n in names if ".layers." in n)
        for name, p in model.named_parameters():
            if ".layers." in name:
                i = int(name.split(".layers.")[1].split(".")[0])
                factor = 10 ** (-orders * (blocks - 1 - i) / (blocks - 1))
                p.register_hook(lambda g, f=factor: g * f)
    return prepare


def deep_llama(tmp_path, std: float, layers: int = 12) -> str:
    config = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": layers,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 300, "initializer_range": std}
    path = tmp_path / f"config-{std}.json"
    path.write_text(json.dumps(config))
    return str(path)


def settings(model: str, steps: int = 4) -> DiagnoseSettings:
    return DiagnoseSettings(model=model, steps=steps, lr=1e-3,
                            plan=Plan(method="full", precision="fp32", batch_size=2, grad_accum=1, seq_len=64))


def test_a_decay_built_into_a_model_is_found(tmp_path) -> None:
    report = run(settings(deep_llama(tmp_path, 0.02, layers=8)), prepare_model=_hook_decay(2.7))
    finding = next(f for f in report.findings if f.code == "vanishing_gradients")
    # the built 2.7 orders on top of the model's own profile (a few tenths of an order for pre-LN)
    assert 2.0 < finding.data["gap"] < 3.4


def test_a_broken_init_is_a_reverse_profile_and_its_control_is_quiet(tmp_path) -> None:
    """Init std 1.0 (fifty times Llama's 0.02) in 24 blocks: the first loss far above ln(300), the first blocks'
    gradients orders above the last; advice about the init, no clip value. At 0.02 the same model is quiet."""
    broken = run(settings(deep_llama(tmp_path, 1.0, layers=24)))
    finding = next(f for f in broken.findings if f.code == "reversed_depth_profile")
    ratio = broken.records[0].loss / math.log(300)
    assert ratio > 1.5 and f"{ratio:.1f}x ln(vocab)" in finding.evidence
    assert not any("max_grad_norm" in a.changes for a in broken.advice)
    assert not any("max_grad_norm" in a.changes for a in advise(broken.records, broken.findings, broken.settings))
    control = run(settings(deep_llama(tmp_path, 0.02, layers=24)))
    assert not {"reversed_depth_profile", "vanishing_gradients"} & {f.code for f in control.findings}
