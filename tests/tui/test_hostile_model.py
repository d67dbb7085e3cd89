"""The app meets a hostile model config: it shows the one-line reason and keeps the last plan, alive."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.tui.test_app import running, set_value

TINY = Path(__file__).resolve().parents[2] / "profiles" / "models" / "tiny-llama.json"


@pytest.mark.asyncio
@pytest.mark.parametrize(("changes", "named"), [
    ({"num_attention_heads": 128}, "'num_attention_heads' is 128, more than hidden_size 64"),
    ({"num_hidden_layers": 10**8}, "'num_hidden_layers' is 100,000,000"),
])
async def test_a_hostile_model_is_reported_and_the_app_lives_on(tmp_path, changes, named) -> None:
    (tmp_path / "config.json").write_text(json.dumps({**json.loads(TINY.read_text()), **changes}))
    async with running() as (app, pilot):
        before = app.state
        await set_value(app, pilot, "model", str(tmp_path))
        assert named in str(app.query_one("#spec").render())
        assert app.is_running and app.state is before
        await set_value(app, pilot, "method", "full")  # the form still works, on the last good model
        assert app.is_running and app.state.plan.method == "full"
