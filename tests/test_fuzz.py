"""Fuzzing the command line (issue 16): whatever a config file, a config.json or YAML text holds, ftplan
answers with an exit code in {0, 1, 2, 3}, never a traceback, in bounded time and memory, and leaves its
inputs byte-identical.

Hypothesis draws training configs for all three frameworks (LLaMA-Factory, axolotl, HF/TRL) as dicts written
as YAML or JSON, free-form YAML texts (anchors, aliases, merge keys, tags, flow and block nesting), and
config.json dicts for `estimate`; a hand-written corpus of hostile files, built here, pins the known attacks
(billion laughs, a merge-key bomb, recursive aliases, deep nesting, huge files, FIFOs, devices, encodings).
The CLI runs in this process (`tui.cli.main`): a traceback is an exception escaping it. Time is CPU time, so
a loaded machine does not fail the bounds.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tui.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = json.loads((ROOT / "profiles" / "models" / "tiny-llama.json").read_text(encoding="utf-8"))
CODES = {0, 1, 2, 3}
CPU_SECONDS = 5.0  # per command; a plan of a tiny model takes well under 0.1 s of CPU
FUZZ = settings(max_examples=int(os.environ.get("FTPLAN_FUZZ_EXAMPLES", "40")), deadline=None,
                derandomize="FTPLAN_FUZZ_EXAMPLES" not in os.environ,  # CI: the same examples each run
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.is_symlink()}


def ftplan(*args: str) -> tuple[int, str, float]:
    """`ftplan ARGS` in this process: (exit code, stderr, CPU seconds). An exception that escapes main() is the
    traceback a user would see, so it fails the test as it is."""
    out, err = io.StringIO(), io.StringIO()
    start = time.process_time()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse's own exit, after its one line
            code = exc.code
    return int(code), err.getvalue(), time.process_time() - start


def check(folder: Path, *args: str) -> tuple[int, str]:
    before = snapshot(folder)
    code, err, cpu = ftplan(*args)
    assert code in CODES, (code, err)
    assert "Traceback" not in err, err
    if code == 2:
        assert err.startswith("ftplan: ") and err.count("\n") == 1 and len(err) < 600, err
    assert cpu < CPU_SECONDS, (cpu, args)
    assert snapshot(folder) == before, "an input changed"
    return code, err


# ------------------------------------------------------------------ values and configs

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["auto", "true", "yes", "1e-4", "-1", "nan", ".inf", "all", "lora", "qlora", "full", "freeze",
                     "sft", "dpo", "kto", "orpo", "ppo", "rm", "grpo", "cpu", "tiny-llama", "identity", "cosine",
                     "adamw_torch", "paged_adamw_8bit", "bf16", "q_proj,v_proj", "", " ", "a" * 300, "x: y", "#"]),
    st.sampled_from([0, 1, 2, 4, 8, 16, 64, 512, 1024, 4096, 10**9, -1, -8, 0.0, 0.1, 0.5, 1.5, 1e-5, 3e-4, 2.0])
)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=10)

TRAINING_KEYS = [
    "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate", "num_train_epochs", "max_steps",
    "warmup_ratio", "warmup_steps", "lr_scheduler_type", "bf16", "fp16", "gradient_checkpointing", "optim",
    "max_grad_norm", "weight_decay", "deepspeed", "seed", "output_dir", "report_to", "save_steps", "logging_steps",
]
KEYS = {
    "llamafactory": ("model_name_or_path", [
        "stage", "do_train", "finetuning_type", "lora_target", "lora_rank", "lora_alpha", "lora_dropout",
        "quantization_bit", "quantization_method", "dataset", "dataset_dir", "template", "cutoff_len",
        "max_samples", "val_size", "packing", "pref_beta", "pref_loss", "use_dora", "use_rslora", "flash_attn",
        "freeze_trainable_layers", "additional_target", "enable_liger_kernel", "use_unsloth", "rope_scaling",
        *TRAINING_KEYS]),
    "axolotl": ("base_model", [
        "adapter", "load_in_4bit", "load_in_8bit", "sequence_len", "micro_batch_size", "num_epochs", "datasets",
        "lora_r", "lora_alpha", "lora_target_modules", "lora_target_linear", "rl", "sample_packing", "flash_attention",
        "val_set_size", "chat_template", "trl", "fsdp", "fsdp_config", "special_tokens", *TRAINING_KEYS]),
    "hf": ("model_name_or_path", [
        "use_peft", "lora_r", "lora_alpha", "lora_target_modules", "load_in_4bit", "load_in_8bit", "max_length",
        "max_seq_length", "dataset_name", "packing", "beta", "loss_type", "num_generations", "max_prompt_length",
        "max_completion_length", "torch_dtype", "attn_implementation", "use_liger_kernel", "fsdp", *TRAINING_KEYS]),
}
MODELS = st.sampled_from(["tiny-llama"] * 12 + ["gpt2", "gpt2", "no-such/model-xyz", 5, None, ["x"]])


INTS = st.one_of(st.integers(-2, 70), st.sampled_from([128, 512, 1024, 4096, 2**31, 10**12]))
FLOATS = st.one_of(st.floats(-1, 2), st.sampled_from([1e-5, 2e-4, 0.1, 16.0, 1e30, float("nan")]))
NAMES = st.sampled_from(["all", "lora", "qlora", "full", "freeze", "sft", "dpo", "kto", "orpo", "rm", "ppo", "grpo",
                         "cpu", "identity", "alpaca_en_demo", "cosine", "adamw_torch", "paged_adamw_8bit", "bf16",
                         "auto", "q_proj,v_proj", "none", "sigmoid", "bnb", "hqq", "linear", "tiny-llama"])


def plausible(key: str):
    """Values of the key's own type most of the time, so a draw gets past the type check into the plan."""
    if key.startswith(("use_", "load_in", "do_", "bf16", "fp16", "packing", "gradient_checkpointing", "flash",
                       "sample_packing", "lora_target_linear", "enable_")):
        return st.booleans()
    if any(part in key for part in ("rate", "ratio", "alpha", "beta", "dropout", "norm", "decay", "epochs",
                                    "val_s")):
        return FLOATS
    if any(part in key for part in ("batch", "steps", "len", "rank", "lora_r", "seed", "bit", "samples", "num_",
                                    "layers")):
        return INTS
    return NAMES


@st.composite
def configs(draw):
    framework = draw(st.sampled_from(sorted(KEYS)))
    model_key, keys = KEYS[framework]
    config = {model_key: draw(MODELS)}
    if framework == "llamafactory":
        config.update(stage="sft", do_train=True, finetuning_type="lora", dataset="identity")
    for key in draw(st.lists(st.sampled_from(keys), max_size=6, unique=True)):
        config[key] = draw(st.one_of(plausible(key), plausible(key), plausible(key), VALUES))
    return config


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(config=configs(), as_json=st.booleans())
def test_preflight_on_any_config_dict(folder, config, as_json) -> None:
    path = folder / ("train.json" if as_json else "train.yaml")
    path.write_text(json.dumps(config) if as_json else yaml.safe_dump(config), encoding="utf-8")
    check(folder, "preflight", str(path), "--gpu", "H100")


LINES = st.sampled_from([
    "model_name_or_path: tiny-llama", "base_model: tiny-llama", "stage: sft", "do_train: true", "dataset: identity",
    "finetuning_type: lora", "adapter: qlora", "a: &a [1, 2, 3]", "b: [*a, *a, *a]", "c: &c {x: 1}", "d: {<<: *c}",
    "e: *undefined", "f: !!binary AAAA", "g: !!set {x, y}", "h: !!python/object/apply:os.system ['touch pwned']",
    "i: !!timestamp 2001-12-14", "? [1, 2]\n: 3", "---", "...", "%YAML 1.1", "\tj: tab", "k: |\n  literal\n  text",
    "l:\n  - m: 1\n    n: [1, {o: p}]", "q: 'unterminated", 'r: "\\x00\\ud800"', "s: 1e400", "t: 0x" + "f" * 40,
    "u: " + "[" * 80 + "]" * 80, "v: &v\n  - *v", "learning_rate: 1.0e-4", "cutoff_len: 1e30", "w: ~", "- item",
    "num_train_epochs: .nan", "lora_target: [1, 2]", "datasets:\n  - path: x\n    type: alpaca", "é: ü", "5: x",
])


@FUZZ
@given(lines=st.lists(LINES, max_size=8), noise=st.text(alphabet=":-[]{},&*!|>'\"#%@`?\n\t x", max_size=40))
def test_preflight_on_any_yaml_text(folder, lines, noise) -> None:
    path = folder / "free.yaml"
    path.write_text("\n".join(lines) + "\n" + noise, encoding="utf-8")
    check(folder, "preflight", str(path), "--gpu", "H100")
    assert not (Path.cwd() / "pwned").exists() and not (folder / "pwned").exists()


MODEL_KEYS = [*TINY, "head_dim", "num_local_experts", "num_experts", "num_experts_per_tok", "moe_intermediate_size",
              "n_routed_experts", "n_shared_experts", "kv_lora_rank", "q_lora_rank", "mlp_only_layers", "rotary_pct",
              "layer_types", "sliding_window", "rope_scaling", "quantization_config", "text_config", "n_layer",
              "n_embd", "n_head", "partial_rotary_factor", "attention_bias", "first_k_dense_replace"]


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(MODEL_KEYS), VALUES, max_size=4),
       method=st.sampled_from(["lora", "qlora", "full"]))
def test_estimate_on_any_model_config(folder, changes, method) -> None:
    model = folder / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text(json.dumps({**TINY, **changes}), encoding="utf-8")
    check(folder, "estimate", "--model", str(model), "--method", method, "--gpu", "H100", "--json")


# ------------------------------------------------------------------ the hand-written corpus

LAUGHS = "".join(f"{a}: &{a} [{', '.join(['*' + p] * 9)}]\n" for p, a in zip("abcdefgh", "bcdefghi", strict=True))
LAUGHS = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + LAUGHS.replace(", ", ",")
MERGE_BOMB = "a: &a {k0: 0, k1: 1, k2: 2, k3: 3, k4: 4, k5: 5, k6: 6, k7: 7, k8: 8}\n" + "".join(
    f"{a}: &{a} {{<<: [{', '.join(['*' + p] * 9)}]}}\n" for p, a in zip("abcdefgh", "bcdefghi", strict=True))
VALID = "model_name_or_path: tiny-llama\nstage: sft\ndo_train: true\nfinetuning_type: lora\ndataset: identity\n"


def _text(text: str, name: str = "train.yaml"):
    def build(folder: Path) -> Path:
        (folder / name).write_text(text, encoding="utf-8")
        return folder / name
    return build


def _bytes(data: bytes, name: str = "train.yaml"):
    def build(folder: Path) -> Path:
        (folder / name).write_bytes(data)
        return folder / name
    return build


def _fifo(folder: Path) -> Path:
    os.mkfifo(folder / "train.yaml")
    return folder / "train.yaml"


def _device(folder: Path) -> Path:
    (folder / "train.yaml").symlink_to("/dev/zero")
    return folder / "train.yaml"


def _loop(folder: Path) -> Path:
    (folder / "train.yaml").symlink_to(folder / "train.yaml")
    return folder / "train.yaml"


def _folder(folder: Path) -> Path:
    (folder / "train.yaml").mkdir()
    return folder / "train.yaml"


# (name, build, exit code, a word the one-line message must hold)
CORPUS = [
    ("billion laughs, 365 bytes", _text(LAUGHS + "model_name_or_path: *i\n"), 2, "expands to more than"),
    ("billion laughs as the dataset", _text(LAUGHS + VALID.replace("dataset: identity", "dataset: *i")), 2,
     "expands to more than"),
    ("merge-key bomb", _text(MERGE_BOMB + VALID), 2, "expands to more than"),
    ("recursive alias", _text(VALID + "x: &r [1, *r]\n"), 2, "contains itself"),
    ("100,000-deep flow nesting", _text(VALID + "x: " + "[" * 100_000 + "]" * 100_000 + "\n"), 2, "nested"),
    ("5,000-deep block nesting", _text(VALID + "x:\n  " + "- " * 5000 + "1\n"), 2, "nested"),
    ("70 levels of mappings", _text(VALID + "x: " + "{a: " * 70 + "1" + "}" * 70 + "\n"), 2, "nested"),
    ("200,000 values in 400 KB", _text(VALID + "x: [" + ",".join(["1"] * 200_000) + "]\n"), 2,
     "expands to more than"),
    ("a 2 MiB file", _text(VALID + "x: '" + "a" * (2 << 20) + "'\n"), 2, "larger than"),
    ("JSON nested 100,000 deep", _text('{"model_name_or_path": "tiny-llama", "x": ' + "[" * 100_000
                                       + "]" * 100_000 + "}", "train.json"), 2, "nested"),
    ("JSON with a 5,000-digit number", _text('{"model_name_or_path": "tiny-llama", "cutoff_len": ' + "1" * 5000
                                             + "}", "train.json"), 2, "digits"),
    ("YAML with a 5,000-digit number", _text(VALID + "cutoff_len: " + "1" * 5000 + "\n"), 2, "cannot be read"),
    ("an impossible date", _text(VALID + "x: 2001-13-45\n"), 2, "cannot be read"),
    ("python/object/apply", _text(VALID + "x: !!python/object/apply:os.system ['touch pwned']\n"), 2,
     "python/object/apply"),
    ("a FIFO", _fifo, 2, "FIFO"),
    ("a symlink to /dev/zero", _device, 2, "character device"),
    ("a symlink loop", _loop, 2, "symlink loop"),
    ("a folder", _folder, 2, "folder"),
    ("UTF-16", _bytes(VALID.encode("utf-16")), 2, "UTF-16"),
    ("a non-UTF-8 byte", _bytes(VALID.encode() + b"x: \xff\n"), 2, "not UTF-8"),
    ("an empty file", _text(""), 2, "mapping"),
    ("a list, not a mapping", _text("- a\n- b\n"), 2, "mapping"),
    ("dataset: [x, 5]", _text(VALID.replace("dataset: identity", "dataset: [x, 5]")), 2, "'dataset'"),
    ("lora_target: [1, 2]", _text(VALID + "lora_target: [1, 2]\n"), 2, "'lora_target'"),
    ("num_train_epochs: .inf", _text(VALID + "num_train_epochs: .inf\n"), 2, "'num_train_epochs'"),
    ("learning_rate: .nan", _text(VALID + "learning_rate: .nan\n"), 2, "'learning_rate'"),
    ("a UTF-8 BOM", _bytes(b"\xef\xbb\xbf" + VALID.encode()), 0, ""),
    ("non-string keys", _text(VALID + "5: x\n1.5: y\ntrue: z\n"), 0, ""),
    ("a list as a key", _text(VALID + "[1, 2]: y\n"), 2, "unhashable"),
]


@pytest.mark.parametrize(("build", "code", "word"), [c[1:] for c in CORPUS], ids=[c[0] for c in CORPUS])
def test_hostile_config_files(tmp_path, build, code, word) -> None:
    path = build(tmp_path)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    got, err = check(tmp_path, "preflight", str(path), "--gpu", "H100")
    assert got == code, err
    assert word in err
    assert not (tmp_path / "pwned").exists() and not (Path.cwd() / "pwned").exists()
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) * 1024  # KiB on Linux
    assert grown < 256 << 20, f"memory grew {grown >> 20} MiB"


def test_the_billion_laughs_file_is_365_bytes_and_refused_within_a_second(tmp_path) -> None:
    path = _text(LAUGHS + "model_name_or_path: *i\n")(tmp_path)
    assert path.stat().st_size == 365  # the file
    ftplan("preflight", str(path), "--gpu", "H100")  # imports warm
    code, err, cpu = ftplan("preflight", str(path), "--gpu", "H100")
    assert code == 2 and "expands to more than" in err and len(err) < 300
    assert cpu < 1.0
