"""The PEFT family's config keys, as LLaMA-Factory, TRL and axolotl spell them: each read into its Plan field
(OFT, DoRA), the variants that keep LoRA's memory (rsLoRA, PiSSA, LoRA+, OLoRA, ...) stated as assumptions, what
the frameworks or peft refuse refused by key, no "did you mean" for any real key, and exports that read back to
the same plan (or are refused, naming the method and the framework, where the framework has no key for it)."""

from __future__ import annotations

import pytest
import yaml

from planner.configs import read_run_config, render_export, write_export
from planner.configs.common import Hyper
from planner.errors import FtplanError
from planner.plan import Plan
from planner.spec import load_spec

MODEL = "qwen2.5-0.5b-instruct"
LF = {"model_name_or_path": MODEL, "stage": "sft", "do_train": True, "dataset": "identity", "cutoff_len": 512}
TRL = {"model_name_or_path": MODEL, "max_length": 512, "dtype": "bfloat16"}
AXOLOTL = {"base_model": MODEL, "datasets": [{"path": "tatsu-lab/alpaca", "type": "alpaca"}], "bf16": True}
# the fields a PEFT method's keys decide
PEFT_FIELDS = ("method", "lora_rank", "lora_target", "lora_dropout", "use_dora", "oft_block_size", "oft_blocks",
               "quant_bits")


def read(tmp_path, base: dict, **keys):
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({**base, **keys}, sort_keys=False))
    return read_run_config(path)


def clean(run) -> None:
    """Every key read: none unknown (so no "did you mean"), none falling through to "not modelled"."""
    assert run.ignored == [], run.ignored
    assert "unknown" not in run.treatment.values(), run.treatment
    assert not [w for w in run.warnings if w.code == "not_modelled"], [w.message for w in run.warnings]


def fields(plan: Plan) -> dict:
    return {name: getattr(plan, name) for name in PEFT_FIELDS}


# ---------------------------------------------------------------- LLaMA-Factory


@pytest.mark.parametrize(("keys", "expected"), [
    # OFTArguments: oft_block_size 32, oft_rank 0; model/adapter.py: target_modules from lora_target (all)
    ({}, {"oft_block_size": 32, "oft_blocks": 0, "lora_target": "all"}),
    ({"oft_block_size": 16, "lora_target": "q_proj,v_proj"},
     {"oft_block_size": 16, "oft_blocks": 0, "lora_target": "q_proj,v_proj"}),
    ({"oft_rank": 8, "oft_block_size": 0, "module_dropout": 0.1},
     {"oft_block_size": 0, "oft_blocks": 8, "lora_target": "all"}),
])
def test_llamafactory_oft_keys_are_the_plans(tmp_path, keys, expected) -> None:
    run = read(tmp_path, LF, finetuning_type="oft", **keys)
    assert run.plan.method == "oft" and run.warnings == []
    assert {name: getattr(run.plan, name) for name in expected} == expected
    clean(run)


def test_llamafactory_plans_oft_on_lora_target_not_oft_target(tmp_path) -> None:
    """LLaMA-Factory parses oft_target but hands lora_target to OFTConfig (model/adapter.py)."""
    run = read(tmp_path, LF, finetuning_type="oft", oft_target="q_proj", lora_target="q_proj,v_proj")
    assert run.plan.lora_target == "q_proj,v_proj"
    assert any(n.startswith("oft_target q_proj:") and "lora_target" in n for n in run.notes)
    clean(run)


@pytest.mark.parametrize(("block", "blocks"), [(32, 8), (0, 0), (16, 0), (0, 4)])
def test_oft_sizes_are_refused_exactly_where_peft_refuses_them(tmp_path, block, blocks) -> None:
    peft = pytest.importorskip("peft")
    try:
        peft.OFTConfig(r=blocks, oft_block_size=block, target_modules=["q_proj"])
        peft_refuses = False
    except ValueError:
        peft_refuses = True
    keys = {"finetuning_type": "oft", "oft_block_size": block, "oft_rank": blocks}
    if peft_refuses:
        with pytest.raises(FtplanError, match=r"keys? 'oft_(rank|block_size)"):
            read(tmp_path, LF, **keys)
    else:
        assert read(tmp_path, LF, **keys).plan.method == "oft"


def test_llamafactory_says_how_to_use_oft_rank(tmp_path) -> None:
    with pytest.raises(FtplanError, match=r"key 'oft_rank' 8 .*set oft_block_size: 0"):
        read(tmp_path, LF, finetuning_type="oft", oft_rank=8)


@pytest.mark.parametrize("switch", ["use_unsloth", "use_kt"])
def test_llamafactory_refuses_oft_with_unsloth_or_ktransformers(tmp_path, switch) -> None:
    with pytest.raises(FtplanError, match=f"key '{switch}'.*finetuning_type oft"):
        read(tmp_path, LF, finetuning_type="oft", **{switch: True})


def test_llamafactory_dora_is_planned_on_lora_and_qlora(tmp_path) -> None:
    run = read(tmp_path, LF, finetuning_type="lora", use_dora=True, lora_rank=16)
    assert (run.plan.method, run.plan.use_dora, run.plan.lora_rank) == ("lora", True, 16) and run.warnings == []
    clean(run)
    quantized = read(tmp_path, LF, finetuning_type="lora", use_dora=True, quantization_bit=4)
    assert (quantized.plan.method, quantized.plan.use_dora) == ("qlora", True)
    # adapter.py: "DoRA is not compatible with PTQ-quantized models" (anything but bitsandbytes)
    with pytest.raises(FtplanError, match=r"key 'use_dora'.*hqq"):
        read(tmp_path, LF, finetuning_type="lora", use_dora=True, quantization_bit=4, quantization_method="hqq")


@pytest.mark.parametrize("key", ["use_dora", "use_rslora", "pissa_init", "loraplus_lr_ratio"])
@pytest.mark.parametrize("method", ["oft", "full", "freeze"])
def test_llamafactory_refuses_lora_variants_without_lora(tmp_path, key, method) -> None:
    """FinetuningArguments.__post_init__: "`use_dora` is only valid for LoRA training." and the like."""
    value = 16.0 if key == "loraplus_lr_ratio" else True
    with pytest.raises(FtplanError, match=f"key '{key}' is only valid for LoRA.*finetuning_type {method}"):
        read(tmp_path, LF, finetuning_type=method, **{key: value})


def test_llamafactory_variants_that_keep_loras_memory_are_assumptions(tmp_path) -> None:
    plain = read(tmp_path, LF, finetuning_type="lora")
    run = read(tmp_path, LF, finetuning_type="lora", use_rslora=True, pissa_init=True, pissa_iter=-1,
               loraplus_lr_ratio=16.0, loraplus_lr_embedding=1e-6)
    assert run.plan == plain.plan and run.warnings == []  # the same tensors: the same plan
    assert run.hyper.use_rslora
    said = "\n".join(run.notes)
    assert "use_rslora: rank-stabilised" in said and "sqrt(r)" in said
    assert "pissa_init (pissa_iter -1): PiSSA" in said and "SVD" in said
    assert "loraplus_lr_ratio 16: LoRA+" in said
    assert all(run.treatment[k] == "modelled" for k in ("use_rslora", "pissa_init", "pissa_iter",
                                                          "loraplus_lr_ratio"))
    clean(run)


@pytest.mark.parametrize(("keys", "message"), [
    ({"quantization_bit": 4}, "quantized model"),  # adapter.py init_adapter
    ({"stage": "dpo"}, "stage dpo"),  # use_ref_model: sigmoid DPO keeps a reference
    ({"stage": "kto"}, "stage kto"),
])
def test_llamafactory_refuses_pissa_where_it_does(tmp_path, keys, message) -> None:
    with pytest.raises(FtplanError, match=f"key 'pissa_init'.*{message}"):
        read(tmp_path, LF, finetuning_type="lora", pissa_init=True, **keys)
    # ORPO and SimPO keep no reference model, so PiSSA runs there
    assert read(tmp_path, LF, finetuning_type="lora", pissa_init=True, stage="dpo", pref_loss="orpo").plan.stage == "orpo"


def test_llamafactory_v1_peft_config_dora(tmp_path) -> None:
    """v1/plugins/model_plugins/peft.py LoraParams: use_dora and use_rslora reach peft's LoraConfig."""
    run = read(tmp_path, {"model": MODEL}, peft_config={"name": "lora", "r": 16, "use_dora": True,
                                                         "use_rslora": True})
    assert (run.plan.method, run.plan.lora_rank, run.plan.use_dora) == ("lora", 16, True)
    assert run.hyper.use_rslora and any(n.startswith("peft_config.use_rslora") for n in run.notes)
    assert not [w for w in run.warnings if w.code == "dora"]
    with pytest.raises(FtplanError, match="finetuning_type: oft"):
        read(tmp_path, {"model": MODEL}, peft_config={"name": "oft"})


# ---------------------------------------------------------------- TRL


def test_trl_dora_and_rslora(tmp_path) -> None:
    """trl/trainer/utils.py get_peft_config: LoraConfig(use_dora=..., use_rslora=...) when use_peft."""
    run = read(tmp_path, TRL, use_peft=True, lora_r=8, use_dora=True, use_rslora=True)
    assert (run.plan.method, run.plan.use_dora, run.plan.lora_rank) == ("lora", True, 8)
    assert run.hyper.use_rslora and any(n.startswith("use_rslora: rank-stabilised") for n in run.notes)
    assert run.warnings == []
    clean(run)
    quantized = read(tmp_path, TRL, use_peft=True, load_in_4bit=True, use_dora=True)
    assert (quantized.plan.method, quantized.plan.use_dora) == ("qlora", True)
    # without use_peft, get_peft_config returns None: no adapter at all
    full = read(tmp_path, TRL, use_peft=False, use_dora=True)
    assert (full.plan.method, full.plan.use_dora) == ("full", False)


# ---------------------------------------------------------------- axolotl


def test_axolotl_dora_and_the_variants(tmp_path) -> None:
    """loaders/adapter.py _build_lora_config_kwargs: peft_use_dora, peft_use_rslora, peft_init_lora_weights;
    core/builders/base.py: loraplus_lr_ratio as the optimizer's groups."""
    run = read(tmp_path, AXOLOTL, adapter="qlora", load_in_4bit=True, lora_r=16, lora_target_linear=True,
               peft_use_dora=True, peft_use_rslora=True, peft_init_lora_weights="olora", loraplus_lr_ratio=16.0,
               loraplus_lr_embedding=1e-6,
               # unset, axolotl turns its LoRA kernels on, whose DoRA variant is warned (test_config_axolotl.py)
               lora_mlp_kernel=False, lora_qkv_kernel=False, lora_o_kernel=False)
    assert (run.plan.method, run.plan.use_dora, run.plan.lora_rank, run.plan.lora_target) == ("qlora", True, 16, "all")
    assert run.hyper.use_rslora
    said = "\n".join(run.notes)
    for start in ("peft_use_rslora: rank-stabilised", "peft_init_lora_weights olora: OLoRA", "loraplus_lr_ratio 16"):
        assert start in said, start
    assert [w.code for w in run.warnings if w.code != "fp32_embeddings"] == []
    clean(run)


def test_axolotl_loftq_and_mica_inits(tmp_path) -> None:
    loftq = read(tmp_path, AXOLOTL, adapter="lora", peft={"loftq_config": {"loftq_bits": 4}})
    assert any(n.startswith("peft.loftq_config loftq: LoftQ") for n in loftq.notes)
    clean(loftq)
    # MiCA freezes B (peft's init_lora_weights docs): fewer trainable tensors than the plan's LoRA
    mica = read(tmp_path, AXOLOTL, adapter="lora", peft_init_lora_weights="mica")
    (warned,) = [w for w in mica.warnings if w.code == "lora_init"]
    assert warned.data["direction"] == "overstates" and warned.data["keys"] == ["peft_init_lora_weights"]


def test_axolotl_lora_settings_on_a_full_fine_tune_do_nothing(tmp_path) -> None:
    run = read(tmp_path, AXOLOTL, peft_use_dora=True, peft_use_rslora=True)
    assert (run.plan.method, run.plan.use_dora) == ("full", False)
    assert any("act only with adapter lora or qlora" in n for n in run.notes)


def test_axolotl_pissa_on_a_quantized_base_is_refused(tmp_path) -> None:
    with pytest.raises(FtplanError, match="key 'peft_init_lora_weights' pissa on a quantized base"):
        read(tmp_path, AXOLOTL, adapter="qlora", load_in_4bit=True, peft_init_lora_weights="pissa")


@pytest.mark.parametrize("init", ["gaussian", "olora", "pissa", "pissa_niter_4", "orthogonal", "bogus",
                                  "pissa_niter_x"])
def test_init_names_are_refused_exactly_where_peft_refuses_them(tmp_path, init) -> None:
    """peft's LoraLayer.update_layer on a tiny fp32 model decides which init_lora_weights names exist."""
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16))
    try:
        peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["0", "2"], init_lora_weights=init))
        peft_refuses = False
    except ValueError:
        peft_refuses = True
    if peft_refuses:
        with pytest.raises(FtplanError, match="key 'peft_init_lora_weights'"):
            read(tmp_path, AXOLOTL, adapter="lora", peft_init_lora_weights=init)
    else:
        clean(read(tmp_path, AXOLOTL, adapter="lora", peft_init_lora_weights=init))


# ---------------------------------------------------------------- exports read back


ROUND_TRIPS = [
    ("llamafactory", {"method": "oft"}),
    ("llamafactory", {"method": "oft", "oft_block_size": 16, "lora_target": "q_proj,v_proj"}),
    ("llamafactory", {"method": "oft", "oft_blocks": 4}),
    ("llamafactory", {"method": "lora", "use_dora": True, "lora_rank": 16}),
    ("llamafactory", {"method": "qlora", "quant_bits": 4, "use_dora": True}),
    ("trl", {"method": "lora", "use_dora": True, "lora_rank": 16}),
    ("trl", {"method": "qlora", "quant_bits": 4, "use_dora": True}),
    ("axolotl", {"method": "lora", "use_dora": True, "lora_rank": 16}),
    ("axolotl", {"method": "qlora", "quant_bits": 4, "use_dora": True}),
]


@pytest.mark.parametrize(("fmt", "changes"), ROUND_TRIPS)
def test_an_export_reads_back_to_the_same_peft_fields(tmp_path, fmt, changes) -> None:
    plan = Plan.build(**changes)
    hyper = Hyper(learning_rate=1e-4, use_rslora=plan.lora_family)
    exported = write_export(fmt, MODEL, plan, tmp_path / "train.yaml", spec=load_spec(MODEL), hyper=hyper)
    run = read_run_config(exported.path)
    assert run.plan == exported.plan
    # the method's own fields are the plan's (the LoRA modules may be spelled by name: the same modules)
    written, planned = fields(run.plan), fields(plan)
    if written["lora_target"] != planned["lora_target"]:
        assert exported.plan.lora_target == written["lora_target"]
        written.pop("lora_target"), planned.pop("lora_target")
    assert written == planned
    assert run.hyper.use_rslora is plan.lora_family
    clean(run)


def test_an_oft_export_says_which_key_llamafactory_targets(tmp_path) -> None:
    plan = Plan.build(method="oft", oft_blocks=4, lora_target="q_proj,v_proj")
    text = render_export("llamafactory", MODEL, plan, tmp_path / "t.yaml", spec=load_spec(MODEL)).text
    config = yaml.safe_load(text)
    assert config["finetuning_type"] == "oft" and config["lora_target"] == config["oft_target"] == "q_proj,v_proj"
    assert (config["oft_block_size"], config["oft_rank"]) == (0, 4)  # peft's OFTConfig takes one of them
    assert config["learning_rate"] == 1e-4  # an adapter's rate, as LLaMA-Factory's OFT example


@pytest.mark.parametrize(("fmt", "framework", "where"), [
    ("llamafactory", "LLaMA-Factory", None),
    ("trl", "TRL", "LLaMA-Factory"),
    ("axolotl", "axolotl", "LLaMA-Factory"),
])
@pytest.mark.parametrize("method", ["prefix", "prompt", "ptuning", "ia3", "adapter", "oft"])
def test_a_method_the_framework_has_no_key_for_is_refused(tmp_path, fmt, framework, where, method) -> None:
    plan = Plan.build(method=method)
    if fmt == "llamafactory" and method == "oft":
        return  # finetuning_type: oft (round-tripped above)
    with pytest.raises(FtplanError, match=f"{framework}'s config has no key for {method}") as refused:
        write_export(fmt, MODEL, plan, tmp_path / "t.yaml", spec=load_spec(MODEL))
    message = str(refused.value)
    assert (f"as a {where} config" in message) if method == "oft" else "peft's" in message
    assert refused.value.field == "method" and "\n" not in message
    assert list(tmp_path.iterdir()) == []


def test_trls_own_parser_builds_dora_and_rslora_from_the_export(tmp_path, monkeypatch) -> None:
    """`trl sft --config FILE` parses the export into ModelConfig, and get_peft_config builds peft's LoraConfig."""
    pytest.importorskip("trl")
    import transformers.training_args as training_args
    from trl.trainer.utils import get_peft_config

    from tests.planner.test_export_trl_parser import parse

    monkeypatch.setattr(training_args, "is_torch_bf16_gpu_available", lambda: True)  # as on a GPU
    plan = Plan.build(method="qlora", use_dora=True, lora_rank=16)
    exported = write_export("trl", MODEL, plan, tmp_path / "train.yaml", spec=load_spec(MODEL),
                            hyper=Hyper(learning_rate=1e-4, use_rslora=True))
    (_script, _training, model, _mixture), _left, _launcher = parse(exported.path, exported.launch)
    config = get_peft_config(model)
    assert (config.use_dora, config.use_rslora, config.r) == (True, True, 16)
    assert model.load_in_4bit is True


def test_every_method_has_learning_rate_ranges() -> None:
    """preflight's learning-rate checks (and diagnose's advice) look every plan method up: none may be missing."""
    from planner.configs.checks import HIGH_LR, TOO_HIGH_LR
    from planner.plan import METHODS

    for method in METHODS:
        assert 0 < HIGH_LR[method] < TOO_HIGH_LR[method], method
