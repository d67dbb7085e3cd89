"""Hostile model configs: wrong types, absurd sizes, unreadable files. Each is one line on stderr naming the key
(or the path) and the fix, exit code 2, in well under a second: never a traceback, never a long run.

Every file is built here, in tmp_path; nothing comes from the network.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from planner.errors import FtplanError
from planner.modelspec import Quantization
from planner.plan import Plan
from planner.service import plan_run
from planner.spec import MAX_CONFIG_BYTES, spec_from_config
from tui.cli import ExitCode, main

MODELS = Path(__file__).resolve().parents[2] / "profiles" / "models"
SECONDS = 5.0  # generous against a loaded CI machine; these take well under a second


def preset(name: str) -> dict:
    return json.loads((MODELS / f"{name}.json").read_text(encoding="utf-8"))


def write(folder: Path, config: dict | None = None, *, text: str | None = None, data: bytes | None = None) -> Path:
    path = folder / "config.json"
    if data is not None:
        path.write_bytes(data)
    else:
        path.write_text(text if text is not None else json.dumps(config), encoding="utf-8")
    return path


def estimate(capsys, model: str, *args: str) -> tuple[int, str, float]:
    """`ftplan estimate --model MODEL` in this process: (exit code, stderr, seconds)."""
    start = time.perf_counter()
    code = main(["estimate", "--model", model, *args])
    return code, capsys.readouterr().err, time.perf_counter() - start


def run(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "tui", *args], capture_output=True, text=True, timeout=60)
    return done, time.perf_counter() - start


def assert_one_line(code: int, err: str, seconds: float, *names: str) -> None:
    assert code == ExitCode.BAD_INPUT, err
    assert "Traceback" not in err and err.startswith("ftplan: ") and err.count("\n") == 1, err
    assert len(err) < 400, err  # values are quoted shortened, whatever their size
    for name in names:
        assert name in err, err
    assert seconds < SECONDS, f"{seconds:.2f} s"


# ------------------------------------------------------------------ config values

LLAMA = "tiny-llama"
LONG = "x" * 100_000

VALUES = [
    ("model_type-list", LLAMA, {"model_type": ["llama"]}, "'model_type'"),
    ("model_type-huge", LLAMA, {"model_type": LONG}, "'model_type'"),
    ("architectures-int", LLAMA, {"architectures": 5}, "'architectures'"),
    ("architectures-huge-name", LLAMA, {"architectures": [LONG]}, "'architectures'"),
    ("max_position_embeddings-str", LLAMA, {"max_position_embeddings": "x"}, "'max_position_embeddings'"),
    ("rotary_pct-str", "pythia-6.9b", {"rotary_pct": "x"}, "'rotary_pct'"),
    ("rotary_pct-above-1", "pythia-6.9b", {"rotary_pct": 5}, "'rotary_pct'"),
    ("partial_rotary_factor-str", LLAMA, {"rope_scaling": {"partial_rotary_factor": "x"}},
     "'rope_scaling.partial_rotary_factor'"),
    ("rope_scaling-str", LLAMA, {"rope_scaling": "linear"}, "'rope_scaling'"),
    ("mlp_only_layers-int", "qwen3-30b-a3b", {"mlp_only_layers": 5}, "'mlp_only_layers'"),
    ("heads-above-hidden", LLAMA, {"num_attention_heads": 128, "num_key_value_heads": 128},
     "'num_attention_heads' is 128, more than hidden_size 64"),
    ("n_head-above-n_embd", "gpt2", {"n_head": 1024}, "'n_head' is 1,024, more than n_embd 768"),
    ("layers-1e30", LLAMA, {"num_hidden_layers": 1e30}, "'num_hidden_layers'"),
    ("layers-1e8", LLAMA, {"num_hidden_layers": 10**8}, "'num_hidden_layers' is 100,000,000"),
    ("layers-4000-digits", LLAMA, {"num_hidden_layers": 10**4000}, "'num_hidden_layers'"),
    ("hidden-1e12", LLAMA, {"hidden_size": 10**12, "num_attention_heads": 1}, "'hidden_size'"),
    ("vocab-negative", LLAMA, {"vocab_size": -5}, "'vocab_size'"),
    ("dropout-nan", LLAMA, {"attention_dropout": math.nan}, "'attention_dropout'"),
    ("dropout-above-1", LLAMA, {"attention_dropout": 3}, "'attention_dropout'"),
    ("softcap-str", "gemma-2-2b", {"attn_logit_softcapping": "x"}, "'attn_logit_softcapping'"),
    ("torch_dtype-list", LLAMA, {"torch_dtype": [1]}, "'torch_dtype'"),
    ("hidden_act-dict", LLAMA, {"hidden_act": {"a": 1}}, "'hidden_act'"),
    ("sliding_window-str", "mistral-7b-v0.1", {"sliding_window": "x"}, "'sliding_window'"),
    ("quantization_config-str", LLAMA, {"quantization_config": "gptq"}, "'quantization_config'"),
    ("quant-bits-str", LLAMA, {"quantization_config": {"quant_method": "gptq", "bits": "x"}},
     "'quantization_config.bits'"),
    ("quant-block-int", LLAMA, {"quantization_config": {"quant_method": "fp8", "weight_block_size": 5}},
     "'quantization_config.weight_block_size'"),
    ("quant-block-three", LLAMA, {"quantization_config": {"quant_method": "fp8", "weight_block_size": [1, 2, 3]}},
     "'quantization_config.weight_block_size'"),
    ("quant-exclusions-redos", LLAMA,
     {"quantization_config": {"quant_method": "gptq", "modules_to_not_convert": ["(a+)+$"]}},
     "'quantization_config.modules_to_not_convert'"),
    ("quant-exclusions-many", LLAMA,
     {"quantization_config": {"quant_method": "gptq", "modules_to_not_convert": [f"m{i}" for i in range(5000)]}},
     "'quantization_config.modules_to_not_convert'"),
    ("text_config-bad", LLAMA, {"model_type": "llava", "text_config": {**preset(LLAMA), "hidden_size": "x"}},
     "'hidden_size'"),
]


@pytest.mark.parametrize(("base", "changes", "named"), [case[1:] for case in VALUES], ids=[c[0] for c in VALUES])
def test_a_bad_value_is_one_line_naming_the_key(tmp_path, capsys, base, changes, named) -> None:
    path = write(tmp_path, {**preset(base), **changes})
    code, err, seconds = estimate(capsys, str(tmp_path))
    assert_one_line(code, err, seconds, named, str(path), "fix")


def test_more_heads_than_hidden_units_is_fine_with_a_head_dim(tmp_path, capsys) -> None:
    """Heads wider than hidden_size / heads are legal when head_dim says so (Gemma does it)."""
    write(tmp_path, {**preset(LLAMA), "num_attention_heads": 128, "num_key_value_heads": 128, "head_dim": 8})
    assert main(["estimate", "--model", str(tmp_path), "--json"]) == ExitCode.OK
    assert json.loads(capsys.readouterr().out)["params"]["total"] > 0


# ------------------------------------------------------------------ every key, every wrong type

# One real config per reader; every key a reader looks at gets each wrong value in turn.
FAMILIES = ["llama-3.2-1b", "mistral-7b-v0.1", "qwen2.5-0.5b-instruct", "qwen3-8b", "qwen3-30b-a3b",
            "qwen1.5-moe-a2.7b", "mixtral-8x7b", "gemma-2-2b", "gemma-3-1b-it", "phi-3-mini-4k-instruct",
            "olmo-2-7b", "starcoder2-7b", "granite-3.1-8b-instruct", "gpt2", "pythia-6.9b", "falcon-7b",
            "deepseek-v3"]
WRONG = ["x", "", [1], {"a": 1}, True, -1, 0, 1.5, 1e30, 10**40, math.nan, math.inf, [], None]
PLAN = Plan(method="lora", lora_target="all-linear", seq_len=512)


class _Recording(dict):
    """A config that notes every key a reader asks for."""

    def __init__(self, data: dict, seen: set[str]):
        super().__init__(data)
        self.seen = seen

    def get(self, key, default=None):
        self.seen.add(key)
        return super().get(key, default)

    def __contains__(self, key) -> bool:
        self.seen.add(key)
        return super().__contains__(key)

    def __getitem__(self, key):
        self.seen.add(key)
        return super().__getitem__(key)


@pytest.mark.parametrize("name", FAMILIES)
def test_every_key_a_reader_reads_refuses_wrong_types_in_one_line(name) -> None:
    base = preset(name)
    seen: set[str] = set()
    spec_from_config(_Recording(base, seen), source="config.json")
    assert len(seen) > 8
    start = time.perf_counter()
    for key in sorted(seen | set(base)):
        for value in WRONG:
            config = {**base, key: value}
            try:
                spec = spec_from_config(config, source="config.json")
            except FtplanError as exc:
                message = str(exc)
                assert "config.json" in message and "\n" not in message and len(message) < 400, message
                continue
            try:  # a value the reader takes must not break the planner further on
                plan_run(spec, PLAN)
            except FtplanError:
                pass
            except Exception as exc:  # what a user would see as a traceback
                pytest.fail(f"{name}: {key}={value!r}: {type(exc).__name__}: {exc}")
    assert time.perf_counter() - start < 60


# ------------------------------------------------------------------ unreadable files


def test_unreadable_config_files_are_one_line_errors(tmp_path, capsys) -> None:
    cases = [  # (folder, what the message says, content)
        ("latin1", "not UTF-8", dict(data=b'{"model_type": "llama\xff"}')),
        ("utf16", "UTF-16 text; save it as UTF-8", dict(data='{"model_type": "llama"}'.encode("utf-16"))),
        ("deep", "nested too deeply", dict(text='{"x": ' + "[" * 100_000 + "]" * 100_000 + "}")),
        ("digits", "more than 4,300 digits", dict(text='{"vocab_size": ' + "9" * 5000 + "}")),
        ("list", "expected a JSON object", dict(text="[1, 2]")),
        ("huge", "far beyond the model's config.json", dict(text='{"pad": "' + "a" * (MAX_CONFIG_BYTES + 10) + '"}')),
    ]
    for folder, words, content in cases:
        (tmp_path / folder).mkdir()
        path = write(tmp_path / folder, **content)
        code, err, seconds = estimate(capsys, str(path))
        assert_one_line(code, err, seconds, words, str(path))


def test_a_utf8_bom_is_read(tmp_path, capsys) -> None:
    write(tmp_path, data=b"\xef\xbb\xbf" + json.dumps(preset(LLAMA)).encode())
    assert main(["estimate", "--model", str(tmp_path)]) == ExitCode.OK
    capsys.readouterr()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_is_refused_not_waited_on(tmp_path) -> None:
    """Opened plainly, a FIFO blocks until a writer comes: forever. Run in a child so a regression times out."""
    os.mkfifo(tmp_path / "config.json")
    for model, words in ((tmp_path, "its config.json is a FIFO"), (tmp_path / "config.json", "is a FIFO")):
        done, seconds = run("estimate", "--model", str(model))
        assert_one_line(done.returncode, done.stderr, seconds, words)
        assert "does not exist" not in done.stderr and "no such file" not in done.stderr


def test_paths_that_are_no_config_file_say_what_they_are(tmp_path, capsys) -> None:
    (tmp_path / "folder" / "config.json").mkdir(parents=True)
    (tmp_path / "loop").mkdir()
    os.symlink("config.json", tmp_path / "loop" / "config.json")  # points at itself
    (tmp_path / "dangling").mkdir()
    os.symlink(tmp_path / "nowhere.json", tmp_path / "dangling" / "config.json")
    cases = [
        (tmp_path / "folder", "its config.json is a folder"),
        (tmp_path / "loop", "symlink loop"),
        (tmp_path / "loop" / "config.json", "symlink loop"),
        (tmp_path / "dangling" / "config.json", "which does not exist"),
        ("/dev/null", "is a character device"),
        ("a" * 256, "path is too long"),
        ("a" * 256 + ".json", "path is too long"),
        (str(tmp_path / ("b" * 300) / "config.json"), "path is too long"),
        ("x/" + "a" * 256, "not a valid hub id"),
    ]
    for model, words in cases:
        code, err, seconds = estimate(capsys, str(model))
        assert_one_line(code, err, seconds, "--model", words)
    code, err, seconds = estimate(capsys, str(tmp_path / "loop"))
    assert "no config.json" not in err


# ------------------------------------------------------------------ bounded time


def test_hostile_sizes_end_quickly_and_without_a_traceback(tmp_path) -> None:
    """The issue's examples as a user meets them: a fresh process, its exit code and stderr."""
    cases = {
        "1e8 layers": {**preset(LLAMA), "num_hidden_layers": 10**8},
        "1e30 layers": {**preset(LLAMA), "num_hidden_layers": 1e30},
        "heads above hidden": {**preset(LLAMA), "num_attention_heads": 128},
    }
    for name, config in cases.items():
        folder = tmp_path / name.replace(" ", "_")
        folder.mkdir()
        write(folder, config)
        done, seconds = run("estimate", "--model", str(folder))
        assert_one_line(done.returncode, done.stderr, seconds, "config.json")
    write(tmp_path, text='{"model_type": "llama", "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    done, seconds = run("estimate", "--model", str(tmp_path))
    assert_one_line(done.returncode, done.stderr, seconds, "nested too deeply")


def test_the_deepest_model_allowed_plans_as_fast_as_a_shallow_one(tmp_path, capsys) -> None:
    from planner.architectures import MAX_LAYERS

    write(tmp_path, {**preset(LLAMA), "num_hidden_layers": MAX_LAYERS})
    for args in (["estimate", "--json"], ["estimate", "--gpu", "H100", "--max-batch", "--max-seq-len", "--json"],
                 ["estimate", "--method", "freeze", "--json"], ["fits", "--json"]):
        start = time.perf_counter()
        assert main([*args, "--model", str(tmp_path)]) in (ExitCode.OK, ExitCode.CHECK_FAILED)
        assert time.perf_counter() - start < SECONDS, args
        capsys.readouterr()
    write(tmp_path, {**preset(LLAMA), "num_hidden_layers": MAX_LAYERS + 1})
    code, err, seconds = estimate(capsys, str(tmp_path))
    assert_one_line(code, err, seconds, "'num_hidden_layers'", f"{MAX_LAYERS:,}")


def test_the_longest_exclusion_list_allowed_plans_quickly(tmp_path, capsys) -> None:
    """Exclusions are matched against every linear of every layer, for every plan `fits` tries."""
    from planner.architectures import MAX_LAYERS, MAX_LIST

    excluded = [f"model.layers.{i}.mlp.gate_proj" for i in range(MAX_LIST - 2)] + [r"lm_head", r".*\.o_proj"]
    write(tmp_path, {**preset(LLAMA), "num_hidden_layers": MAX_LAYERS,
                     "quantization_config": {"quant_method": "gptq", "bits": 4, "modules_to_not_convert": excluded}})
    for args in (["estimate", "--method", "lora", "--json"], ["fits", "--methods", "lora,qlora", "--json"]):
        start = time.perf_counter()
        assert main([*args, "--model", str(tmp_path)]) == ExitCode.OK
        assert time.perf_counter() - start < SECONDS, args
        capsys.readouterr()


# ------------------------------------------------------------------ exclusions: fast and still exact


def _transformers_converts(excluded: tuple[str, ...], module: str) -> bool:
    """The rule as transformers writes it, one key at a time (quantizers_utils.should_convert_module)."""
    for key in excluded:
        try:
            if re.match(rf"(?:{key})(?:(?<=\.)|(?=\.|$))", module):
                return False
        except re.error:
            pass
        if module.endswith(key):
            return False
    return True


@pytest.mark.parametrize("excluded", [
    (),
    ("lm_head",),
    ("model.layers.1", "mlp.gate_proj", "self_attn.q"),
    ("model.layers.1.", "down_proj", "model.layers.10.mlp"),
    (r"model\.layers\.\d+\.mlp\.up_proj", "[invalid", "o_proj"),
    ("a)|(model.layers.2", "model.layers.3.self.attn"),  # valid only in its own group; `.` matches any character
    (r"(model)\.layers\.\d\.\1", "(?i)MODEL.LAYERS.4", "(?P<x>model).layers.5"),
    ("",),
])
def test_exclusions_match_as_transformers_matches_them(excluded) -> None:
    q = Quantization(method="gptq", bits=4, excluded=excluded)
    paths = ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "mlp.experts")
    for layer in range(12):
        for path in paths:
            module = f"model.layers.{layer}.{path}"
            assert q.converts(module) == _transformers_converts(excluded, module), (excluded, module)
    for start, count in ((0, 12), (1, 3), (10, 2)):
        for path in paths:
            expected = sum(_transformers_converts(excluded, f"model.layers.{i}.{path}")
                           for i in range(start, start + count))
            assert q.converted_layers(path, start, count) == expected
