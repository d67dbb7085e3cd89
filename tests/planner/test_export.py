"""Exports that run as written: LLaMA-Factory, TRL and axolotl configs of a plan, read back by the readers
`ftplan preflight` uses to the plan the framework runs (the GPU count too), with the model's Hub id, a chat
template, an output_dir, a loud dataset placeholder, a DeepSpeed file that resolves, and the launch and check
commands."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml

from diagnostics.preflight import preflight
from planner.configs import EXPORT_FORMATS, read_run_config, render_export, write_export
from planner.configs.export import READ_AS
from planner.errors import FtplanError
from planner.plan import Plan
from planner.service import plan_run
from planner.spec import load_spec
from planner.target import GpuTarget

MODEL, HUB_ID = "8b", "meta-llama/Llama-3.1-8B"
# fields the framework may run otherwise than planned without a word: another spelling of the same thing (the
# LoRA modules by name, 4 bits for QLoRA, the stage's own default), or a setting this method and stage ignore
SILENT = {"framework", "lora_target", "quant_bits", "fused_loss", "reference_model", "lora_rank", "lora_dropout",
          "double_quant", "freeze_trainable_layers", "num_generations", "vllm_gpu_memory_utilization", "nll_term",
          "precompute_ref_log_probs", "max_completion_len"}


def plan_of(gpus: int, method: str, stage: str) -> Plan:
    return Plan.build(method=method, stage=stage, gpus=gpus, zero=3 if gpus > 1 else 0, batch_size=2, grad_accum=4,
                      seq_len=2048, gradient_checkpointing=True, attention="flash")


def check_args(exported) -> tuple[int, str | None]:
    """The --gpus and --stage of the export's `ftplan preflight` command."""
    args = shlex.split(exported.preflight)
    assert args[:3] == ["ftplan", "preflight", str(exported.path)]
    return int(args[args.index("--gpus") + 1]), (args[args.index("--stage") + 1] if "--stage" in args else None)


def total(plan: Plan) -> int:
    return plan_run(load_spec(MODEL), plan, GpuTarget.of_catalog("H100")).memory.total


@pytest.mark.parametrize("stage", ["sft", "dpo"])
@pytest.mark.parametrize("method", ["lora", "qlora", "full"])
@pytest.mark.parametrize("gpus", [1, 8])
@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_an_export_reads_back_to_the_plan_it_runs(tmp_path, fmt, gpus, method, stage) -> None:
    plan = plan_of(gpus, method, stage)
    exported = write_export(fmt, MODEL, plan, tmp_path / "train.yaml", spec=load_spec(MODEL))
    gpus_flag, stage_flag = check_args(exported)
    assert gpus_flag == gpus

    run = read_run_config(exported.path, stage=stage_flag)
    assert run.format == READ_AS[fmt] and run.model == HUB_ID
    if fmt == "axolotl":  # axolotl has no key for the process count: the check command's --gpus carries it
        assert run.gpus is None
    else:
        assert (run.gpus or 1) == gpus
    assert run.plan.with_(gpus=gpus_flag) == exported.plan

    # what the framework runs differs from the plan only where the file says so, or where the estimate is the same
    changed = {k for k, v in exported.plan.model_dump().items() if getattr(plan, k) != v}
    if exported.notes:
        assert all(f"#   - {note}" in exported.text for note in exported.notes)
    else:
        assert changed <= SILENT, changed
        assert total(exported.plan) == total(plan)

    # `ftplan preflight` as the check command runs it (the catalog GPU instead of this machine's)
    report = preflight(exported.path, gpu="H100", gpus=gpus_flag if fmt == "axolotl" else None, stage=stage_flag)
    assert report.gpus == gpus and report.estimate.plan.with_(batch_size=plan.batch_size) == exported.plan
    assert report.estimate.memory.total == total(exported.plan)


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_a_multi_gpu_export_says_how_to_launch_and_check_it(tmp_path, fmt) -> None:
    plan = plan_of(8, "lora", "sft").with_(offload_optimizer=True)
    exported = write_export(fmt, MODEL, plan, tmp_path / "run" / "train.yaml", spec=load_spec(MODEL), gpu="H100")
    header = [line for line in exported.text.splitlines() if line.startswith("#")]
    path = str(tmp_path / "run" / "train.yaml")
    assert f"# check:  ftplan preflight {path} --gpu H100 --gpus 8" in header
    launch = {"llamafactory": f"FORCE_TORCHRUN=1 NPROC_PER_NODE=8 llamafactory-cli train {path}",
              "trl": f"trl sft --config {path}",
              "axolotl": f"axolotl train {path} --launcher accelerate -- --num_processes 8"}[fmt]
    assert f"# launch: {launch}" in header and exported.launch == launch
    config = yaml.safe_load(exported.text)
    if fmt == "trl":
        assert config["num_processes"] == 8 and "accelerate launch --num_processes 8" in exported.text
    # the DeepSpeed file sits beside the YAML, named after it, and is referenced by its absolute path
    ds = tmp_path / "run" / "train.ds_z3.json"
    assert exported.deepspeed == ds and config["deepspeed"] == str(ds) and Path(config["deepspeed"]).is_absolute()
    settings = json.loads(ds.read_text())
    assert settings["zero_optimization"]["stage"] == 3
    assert settings["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert settings["train_batch_size"] == 2 * 4 * 8  # the global batch: DeepSpeed stops on another GPU count
    assert read_run_config(exported.path).plan.offload_optimizer


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_the_model_is_its_hub_id_and_the_dataset_a_loud_placeholder(tmp_path, fmt) -> None:
    for model, hub_id in (("7b", "meta-llama/Llama-2-7b-hf"), ("qwen2.5-7b-instruct", "Qwen/Qwen2.5-7B-Instruct"),
                          ("Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct")):
        exported = render_export(fmt, model, Plan(method="lora"), tmp_path / "t.yaml", spec=load_spec(model))
        config = yaml.safe_load(exported.text)
        key = {"llamafactory": "model_name_or_path", "trl": "model_name_or_path", "axolotl": "base_model"}[fmt]
        assert config[key] == hub_id
        assert config.get("output_dir")
    data = {"llamafactory": lambda c: c["dataset"], "trl": lambda c: c["dataset_name"],
            "axolotl": lambda c: c["datasets"][0]["path"]}[fmt]
    assert data(config) == "REPLACE-WITH-YOUR-DATASET"
    line = next(line for line in exported.text.splitlines() if "REPLACE-WITH-YOUR-DATASET" in line and ":" in line
                and not line.startswith("#"))
    assert "# REPLACE:" in line
    assert "# Replace every REPLACE-WITH-YOUR-... value (dataset) before launching" in exported.text


def test_a_local_model_directory_is_its_absolute_path(tmp_path) -> None:
    folder = tmp_path / "my-model"
    folder.mkdir()
    preset = Path(__file__).resolve().parents[2] / "profiles" / "models" / "tiny-llama.json"
    (folder / "config.json").write_text(preset.read_text())
    exported = render_export("llamafactory", str(folder / "config.json"), Plan(method="lora"), tmp_path / "t.yaml",
                             spec=load_spec(str(folder)))
    assert yaml.safe_load(exported.text)["model_name_or_path"] == str(folder)
    assert "# template: LLaMA-Factory has none for llama" in exported.text  # neither Llama 2 nor 3 by name or vocabulary


@pytest.mark.parametrize(("model", "template"), [
    ("8b", "llama3"), ("7b", "llama2"), ("qwen2.5-7b-instruct", "qwen"), ("qwen3-8b", "qwen3"),
    ("deepseek-r1-distill-qwen-7b", "deepseekr1"), ("mistral-7b-instruct-v0.3", "mistral"), ("gemma-2-9b", "gemma2"),
    ("gemma-3-1b-it", "gemma3"), ("phi-3-mini-4k-instruct", "phi"), ("granite-3.1-8b-instruct", "granite3"),
    ("gpt2", None), ("olmo-2-7b", None), ("starcoder2-7b", None),
])
def test_llamafactory_gets_the_template_of_the_family(tmp_path, model, template) -> None:
    plan = Plan(method="lora", lora_target="all-linear" if model == "gpt2" else "all")
    exported = render_export("llamafactory", model, plan, tmp_path / "t.yaml", spec=load_spec(model))
    assert yaml.safe_load(exported.text).get("template") == template
    if template is None:
        assert "# template: LLaMA-Factory has none for" in exported.text


@pytest.mark.parametrize(("fmt", "changes", "message"), [
    ("llamafactory", {"stage": "grpo"}, "LLaMA-Factory has no GRPO stage"),
    ("trl", {"stage": "orpo"}, "only in trl.experimental"),
    ("trl", {"stage": "simpo"}, "only in trl.experimental"),
    ("trl", {"stage": "ppo"}, "TRL 1.x has no PPO trainer"),
    ("axolotl", {"stage": "ppo"}, "axolotl has no PPO trainer"),
    ("trl", {"method": "freeze"}, "no layer freezing"),
    ("axolotl", {"method": "freeze"}, "not by layer count"),
    ("axolotl", {"method": "full", "precision": "fp16-mixed"}, "gradient scaler refuses"),
])
def test_a_stage_or_method_the_framework_lacks_is_refused(tmp_path, fmt, changes, message) -> None:
    with pytest.raises(FtplanError, match=message):
        write_export(fmt, MODEL, Plan(method="lora").with_(**changes), tmp_path / "t.yaml", spec=load_spec(MODEL))
    assert list(tmp_path.iterdir()) == []


def test_ftplans_own_model_and_a_bare_config_file_are_refused(tmp_path) -> None:
    with pytest.raises(FtplanError, match=r"tiny-llama is ftplan's own model .*no Hub repo"):
        render_export("trl", "tiny-llama", Plan(method="lora"), tmp_path / "t.yaml")
    other = tmp_path / "llama.json"
    other.write_text("{}")
    with pytest.raises(FtplanError, match="not a model directory"):
        render_export("trl", str(other), Plan(method="lora"), tmp_path / "t.yaml")


def test_an_export_never_overwrites_without_being_told(tmp_path) -> None:
    plan = plan_of(8, "full", "sft")
    first = write_export("llamafactory", MODEL, plan, tmp_path / "train.yaml", spec=load_spec(MODEL))
    before = first.path.read_text()
    with pytest.raises(FtplanError, match="the file exists; add --force"):
        write_export("llamafactory", MODEL, plan.with_(zero=2), tmp_path / "train.yaml", spec=load_spec(MODEL))
    assert first.path.read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "train.ds_z3.json", "train.yaml"]
    # the DeepSpeed file of another export in the folder is its own, never shared
    (tmp_path / "other.ds_z3.json").write_text("mine\n")
    with pytest.raises(FtplanError, match=r"other\.ds_z3\.json: the file exists"):
        write_export("trl", MODEL, plan, tmp_path / "other.yaml", spec=load_spec(MODEL))
    assert not (tmp_path / "other.yaml").exists()
    again = write_export("llamafactory", MODEL, plan.with_(zero=2), tmp_path / "train.yaml", spec=load_spec(MODEL),
                         existing="replace")
    assert again.deepspeed.name == "train.ds_z2.json" and "train.ds_z2.json" in again.path.read_text()
    renamed = write_export("llamafactory", MODEL, plan, tmp_path / "train.yaml", spec=load_spec(MODEL),
                           existing="rename")
    assert renamed.path.name == "train-1.yaml" and renamed.deepspeed.name == "train-1.ds_z3.json"
    assert str(renamed.deepspeed) in renamed.path.read_text()


def test_an_export_is_yaml(tmp_path) -> None:
    with pytest.raises(FtplanError, match=r"name it \.yaml or \.yml"):
        write_export("trl", MODEL, Plan(), tmp_path / "train.json", spec=load_spec(MODEL))


@pytest.mark.parametrize("fmt", ["trl", "axolotl"])
def test_grpo_exports_for_the_frameworks_that_have_it(tmp_path, fmt) -> None:
    plan = Plan.build(method="lora", stage="grpo", seq_len=1536, max_completion_len=1024, num_generations=4,
                      batch_size=4, vllm="colocate", vllm_gpu_memory_utilization=0.4)
    exported = write_export(fmt, MODEL, plan, tmp_path / "grpo.yaml", spec=load_spec(MODEL))
    assert "REPLACE-WITH-YOUR-REWARD-FUNCTION" in exported.text
    _gpus, stage = check_args(exported)
    run = read_run_config(exported.path, stage=stage)
    assert run.plan == exported.plan
    assert (run.plan.num_generations, run.plan.max_completion_len, run.plan.vllm, run.plan.seq_len) == (
        4, 1024, "colocate", 1536)


def test_a_setting_the_framework_cannot_follow_is_said_at_the_top(tmp_path) -> None:
    plan = Plan.build(method="full", precision="bf16-mixed")  # fp32 masters; axolotl trains bf16 weights as loaded
    exported = render_export("axolotl", MODEL, plan, tmp_path / "t.yaml", spec=load_spec(MODEL))
    assert exported.plan.precision == "bf16" and len(exported.notes) == 1
    assert f"#   - {exported.notes[0]}" in exported.text and "fp32 master" in exported.notes[0]
    dpo = Plan.build(method="lora", stage="dpo", fused_loss=False)  # TRL's DPO always fuses the head
    exported = render_export("trl", MODEL, dpo, tmp_path / "t.yaml", spec=load_spec(MODEL))
    assert exported.plan.fused_loss is True and "fused LM head" in exported.notes[0]


def test_a_grpo_batch_trl_would_refuse_is_not_exported(tmp_path) -> None:
    """TRL's GRPOConfig stops on a generation batch that is not whole groups of num_generations."""
    plan = Plan.build(method="lora", stage="grpo", batch_size=2, num_generations=8)
    with pytest.raises(FtplanError, match="multiple of 8"):  # 2 per GPU x 1 GPU x accumulation 1: 2 completions
        write_export("trl", MODEL, plan.with_(grad_accum=1), tmp_path / "grpo.yaml", spec=load_spec(MODEL))
    assert not (tmp_path / "grpo.yaml").exists()
    write_export("trl", MODEL, plan.with_(grad_accum=4), tmp_path / "grpo.yaml", spec=load_spec(MODEL))


@pytest.mark.parametrize(("fmt", "method", "checkpointing", "mode"), [
    ("llamafactory", "lora", True, "checkpoint"), ("trl", "lora", True, "checkpoint"),
    ("trl", "full", False, "saved"), ("axolotl", "lora", False, "saved"), ("axolotl", "full", True, "saved"),
    ("axolotl", "lora", True, "checkpoint"),
])
def test_activation_offloading_exports_as_the_framework_spells_it(tmp_path, fmt, method, checkpointing,
                                                                   mode) -> None:
    plan = Plan.build(method=method, gradient_checkpointing=checkpointing, activation_offload=mode, batch_size=2,
                      seq_len=2048, precision="bf16" if method == "full" else "bf16-mixed")
    exported = write_export(fmt, MODEL, plan, tmp_path / "train.yaml", spec=load_spec(MODEL))
    read = read_run_config(exported.path).plan
    assert exported.notes == () and exported.plan == read
    assert (read.gradient_checkpointing, read.activation_offload) == (checkpointing, mode)


@pytest.mark.parametrize(("fmt", "method", "checkpointing", "runs"), [
    ("llamafactory", "lora", True, {"activation_offload": "checkpoint"}),
    ("llamafactory", "full", False, {"activation_offload": "off"}),
    ("axolotl", "lora", True, {"gradient_checkpointing": False}),
    ("axolotl", "full", False, {"gradient_checkpointing": True}),
])
def test_offloading_a_framework_cannot_follow_is_said(tmp_path, fmt, method, checkpointing, runs) -> None:
    plan = Plan.build(method=method, gradient_checkpointing=checkpointing, activation_offload="saved",
                      precision="bf16" if method == "full" else "bf16-mixed")
    exported = write_export(fmt, MODEL, plan, tmp_path / "train.yaml", spec=load_spec(MODEL))
    read = read_run_config(exported.path).plan
    assert exported.notes and all(f"#   - {note}" in exported.text for note in exported.notes)
    assert read == exported.plan and {k: getattr(read, k) for k in runs} == runs


@pytest.mark.parametrize("kernels", ["default", "rms_norm,glu", "rope,cross_entropy", ""])
@pytest.mark.parametrize("fused", [True, None])
@pytest.mark.parametrize("stage", ["sft", "dpo"])
@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_liger_kernels_read_back_as_written(tmp_path, fmt, stage, fused, kernels) -> None:
    """Each export writes the framework's Liger keys; what it runs otherwise than planned is said in the file."""
    if fused and "cross_entropy" in kernels:
        return  # refused by the plan (Liger asserts not both)
    plan = Plan.build(method="lora", stage=stage, fused_loss=fused, liger_kernels=kernels, batch_size=2,
                      seq_len=1024)
    exported = write_export(fmt, MODEL, plan, tmp_path / "train.yaml", spec=load_spec(MODEL))
    run = read_run_config(exported.path, stage=check_args(exported)[1])
    assert run.plan.with_(gpus=1) == exported.plan
    if exported.plan.liger_kernels != plan.liger_kernels:
        assert any("Liger" in note for note in exported.notes)
    if plan.liger_kernels:
        assert "liger" in exported.text


# ---------------------------------------------------------------- parallelism beyond ZeRO (issue 11)


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_parallel_sizes_and_parameter_offload_read_back(tmp_path, fmt) -> None:
    plan = Plan.build(method="lora", gpus=8, zero=3, offload_optimizer=True, offload_params=True,
                      context_parallel=2, tensor_parallel=2, seq_len=4096, attention="flash")
    exported = write_export(fmt, MODEL, plan, tmp_path / "train.yaml", spec=load_spec(MODEL))
    gpus, stage = check_args(exported)
    run = read_run_config(exported.path, stage=stage)
    assert run.plan.with_(gpus=gpus) == exported.plan
    assert exported.plan.offload_params  # DeepSpeed's offload_param, read back from the file
    if fmt == "axolotl":  # context_parallel_size and tensor_parallel_size
        assert (exported.plan.context_parallel, exported.plan.tensor_parallel) == (2, 2)
    else:  # the file cannot carry them: it says so and runs data parallel
        assert (exported.plan.context_parallel, exported.plan.tensor_parallel) == (1, 1)
        assert any("data parallel" in note for note in exported.notes)
