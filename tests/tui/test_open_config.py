"""Open a training config (issue 14): `ftplan tui FILE` and `o` fill the Plan form from a LLaMA-Factory config,
and `e` writes the form's changes into a copy that keeps the user's other keys and comments."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from planner.configs import read_run_config
from tests.tui.test_app import settle
from tui.app import FtplanApp

# a LLaMA-Factory SFT config as people write them: comments, keys ftplan does not model, an odd order
CONFIG = """\
### model
model_name_or_path: tiny-llama
trust_remote_code: true

### method
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 16
lora_target: all

### dataset
dataset: my_chats  # our own data
template: llama3
cutoff_len: 512
overwrite_cache: true

### train
per_device_train_batch_size: 4
gradient_accumulation_steps: 8
learning_rate: 1.0e-4
num_train_epochs: 3.0
bf16: true
output_dir: saves/tiny/lora
"""


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(CONFIG)
    return path


async def opened(app, pilot) -> None:
    for _ in range(3):  # the model loads in a worker, after the form is filled
        await pilot.pause(0.3)
        await settle(app, pilot)


@pytest.mark.asyncio
async def test_a_config_fills_the_form_and_exports_back_keeping_its_other_keys(config, tmp_path) -> None:
    app = FtplanApp(config=str(config))
    async with app.run_test(size=(120, 40)) as pilot:
        await opened(app, pilot)
        plan = app.state.plan
        assert app.state.model == "tiny-llama"
        assert (plan.method, plan.lora_rank, plan.seq_len, plan.batch_size, plan.grad_accum) == ("lora", 16, 512, 4, 8)
        assert app.query_one("#batch_size").value == "4"

        app.query_one("#batch_size").value = "2"
        app.query_one("#seq_len").value = "1024"
        await settle(app, pilot)
        out = app.export_back(str(tmp_path / "train-ftplan.yaml"))
    text = out.read_text()
    before, after = yaml.safe_load(CONFIG), yaml.safe_load(text)
    # the two settings changed, every other key of the user's as it was, the comments kept
    assert after["per_device_train_batch_size"] == 2 and after["cutoff_len"] == 1024
    assert {k: v for k, v in after.items() if k not in ("per_device_train_batch_size", "cutoff_len")} == \
        {k: v for k, v in before.items() if k not in ("per_device_train_batch_size", "cutoff_len")}
    assert "### dataset" in text and "# our own data" in text
    assert config.read_text() == CONFIG  # the opened file is never touched
    run = read_run_config(out)
    assert (run.plan.batch_size, run.plan.seq_len, run.plan.grad_accum) == (2, 1024, 8)


@pytest.mark.asyncio
async def test_the_o_key_opens_a_config_and_a_bad_one_is_reported(config, tmp_path) -> None:
    app = FtplanApp()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await pilot.press("o")
        await pilot.pause()
        app.screen.query_one("#export-path").value = str(tmp_path / "nothing-here.yaml")
        await pilot.press("enter")
        await settle(app, pilot)
        assert app.opened is None and app.state.model == "7b"  # the plan stays

        await pilot.press("o")
        await pilot.pause()
        app.screen.query_one("#export-path").value = str(config)
        await pilot.press("enter")
        await opened(app, pilot)
        assert app.opened is not None and app.state.model == "tiny-llama" and app.state.plan.grad_accum == 8


def test_ftplan_tui_with_an_unreadable_config_is_one_line_and_exit_2(tmp_path) -> None:
    bad = tmp_path / "notes.yaml"
    bad.write_text("just: a note\n")
    for path in (tmp_path / "missing.yaml", bad):
        done = subprocess.run([sys.executable, "-m", "tui", "tui", str(path)], capture_output=True, text=True,
                              timeout=60, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
        assert done.returncode == 2, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
        assert done.stderr.startswith("ftplan: ")
