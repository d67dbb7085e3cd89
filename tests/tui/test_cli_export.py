"""`ftplan export`: the estimate command's plan flags, one writer with the TUI, no overwrite without --force."""

from __future__ import annotations

import json
from pathlib import Path

from planner.configs import EXPORT_FORMATS, read_run_config
from planner.plan import Plan
from tui.cli import ExitCode, build_parser, main


def test_export_writes_what_preflight_reads_back(tmp_path, capsys) -> None:
    out = tmp_path / "dpo.yaml"
    code = main(["export", "--model", "8b", "--method", "qlora", "--stage", "dpo", "--gpus", "8", "--zero", "3",
                 "--batch-size", "2", "--seq-len", "2048", "--gpu", "H100", "--format", "trl", "-o", str(out)])
    assert code == ExitCode.OK
    printed = capsys.readouterr().out
    assert f"wrote {out} (TRL config)" in printed and f"wrote {tmp_path / 'dpo.ds_z3.json'}" in printed
    assert f"check:  ftplan preflight {out} --gpu H100-80GB --gpus 8 --stage dpo" in printed
    assert f"launch: trl dpo --config {out}" in printed
    run = read_run_config(out, stage="dpo")
    assert run.model == "meta-llama/Llama-3.1-8B" and run.gpus == 8
    assert (run.plan.method, run.plan.stage, run.plan.zero, run.plan.batch_size, run.plan.seq_len) == (
        "qlora", "dpo", 3, 2, 2048)


def test_export_refuses_to_overwrite_without_force(tmp_path, capsys) -> None:
    out = tmp_path / "train.yaml"
    out.write_text("mine\n")
    args = ["export", "--model", "7b", "--method", "lora", "--format", "llamafactory", "-o", str(out)]
    assert main(args) == ExitCode.BAD_INPUT
    assert "the file exists; add --force" in capsys.readouterr().err and out.read_text() == "mine\n"
    assert main([*args, "--force"]) == ExitCode.OK
    assert read_run_config(out).model == "meta-llama/Llama-2-7b-hf"


def test_export_never_writes_over_the_models_config(tmp_path, capsys) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    preset = Path(__file__).resolve().parents[2] / "profiles" / "models" / "llama-3.2-1b.json"
    (folder / "config.json").write_text(preset.read_text())
    code = main(["export", "--model", str(folder), "--format", "axolotl", "-o", str(folder / "config.json"),
                 "--force"])
    assert code == ExitCode.BAD_INPUT and "input file" in capsys.readouterr().err
    assert json.loads((folder / "config.json").read_text())["model_type"] == "llama"


def test_export_refuses_a_stage_the_framework_lacks_in_one_line(tmp_path, capsys) -> None:
    code = main(["export", "--model", "8b", "--stage", "grpo", "--format", "llamafactory", "-o",
                 str(tmp_path / "g.yaml")])
    err = capsys.readouterr().err
    assert code == ExitCode.BAD_INPUT and err.count("\n") == 1
    assert err.startswith("ftplan: --stage: LLaMA-Factory has no GRPO stage") and not list(tmp_path.iterdir())


def test_export_json_and_the_format_list(tmp_path, capsys) -> None:
    code = main(["export", "--model", "7b", "--method", "full", "--format", "axolotl", "-o", str(tmp_path / "a.yaml"),
                 "--json"])
    assert code == ExitCode.OK
    data = json.loads(capsys.readouterr().out)
    assert data["files"] == [str(tmp_path / "a.yaml")] and data["launch"].startswith("axolotl train")
    assert Plan(**data["plan"]).precision == "bf16" and data["notes"]  # axolotl trains the bf16 weights it loads
    choices = build_parser()._subparsers._group_actions[0].choices["export"]._option_string_actions["--format"]
    assert tuple(choices.choices) == EXPORT_FORMATS
