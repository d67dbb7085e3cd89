"""ftplan's exports loaded by LLaMA-Factory's and axolotl's own parsers, and checked back with `ftplan preflight`.

Neither framework installs beside ftplan's pins, so each runs in its own environment, not in CI (CI checks the
exports against the frameworks' documented keys, tests/planner/test_export.py). The environments, as built:

    python3.11 -m venv /tmp/lfenv
    /tmp/lfenv/bin/pip install torch==2.13.0            # the CPU wheel; llamafactory's deps would pull CUDA torch 2.14
    /tmp/lfenv/bin/pip install --no-deps llamafactory==0.9.5
    /tmp/lfenv/bin/pip install transformers==5.6.0 peft==0.18.1 trl==0.24.0 accelerate "datasets==4.0.0" \
        omegaconf pyyaml numpy pydantic fire einops sentencepiece tiktoken protobuf scipy torch==2.13.0
    DS_BUILD_OPS=0 /tmp/lfenv/bin/pip install deepspeed   # 0.19.8: read when the config names a DeepSpeed file

    python3.11 -m venv /tmp/axenv
    /tmp/axenv/bin/pip install torch==2.13.0
    /tmp/axenv/bin/pip install --no-deps axolotl==0.19.0 axolotl-contribs-lgpl==0.0.7 axolotl-contribs-mit==0.0.6
    /tmp/axenv/bin/pip install torch==2.13.0 transformers==5.16.1 peft==0.20.0 trl==1.9.0 accelerate==1.13.0 \
        datasets==4.8.4 pydantic==2.12.5 pyyaml addict fire colorama numpy packaging requests \
        huggingface_hub==1.17.0 einops pillow

    python benchmarks/export_roundtrip.py --write   # from the repository root, in the project venv

For each plan it writes the export with `ftplan export`, parses it in the framework's venv (LLaMA-Factory:
`llamafactory.hparams.get_train_args` on the YAML as a dict, with `use_cpu` added because this machine has no GPU
and transformers refuses bf16 without one; axolotl: `validate_config` then `normalize_config`), compares the
memory-relevant settings the parser produced with the flags the plan was made from, and runs `ftplan preflight`
on the export to compare its memory total with `ftplan estimate`'s for the same flags.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from planner.files import write_text_atomic  # noqa: E402

PROJECT_PY = str(ROOT / ".venv" / "bin" / "python")
VENVS = {"llamafactory": "/tmp/lfenv/bin/python", "axolotl": "/tmp/axenv/bin/python"}
MODEL = "llama-3.1-8b"
GPU = "H100"

# name, ftplan flags; the flags are the truth the parsed settings are compared with
PLANS = [
    ("LoRA, 1 GPU", dict(method="lora", batch_size=4, grad_accum=2, seq_len=2048, precision="bf16-mixed",
                         lora_rank=16, gpus=1)),
    ("QLoRA 4-bit, 1 GPU", dict(method="qlora", batch_size=2, grad_accum=4, seq_len=2048, precision="bf16-mixed",
                                lora_rank=8, gpus=1)),
    ("full, 1 GPU", dict(method="full", batch_size=1, grad_accum=8, seq_len=1024, precision="bf16-mixed", gpus=1)),
    ("full, 8 GPUs ZeRO-3", dict(method="full", batch_size=2, grad_accum=4, seq_len=2048, precision="bf16-mixed",
                                 gpus=8, zero=3)),
    ("DPO LoRA, 1 GPU", dict(method="lora", stage="dpo", batch_size=1, grad_accum=8, seq_len=1024,
                             precision="bf16-mixed", lora_rank=16, gpus=1)),
]

# Runs inside the framework's venv: prints one JSON line per config with what the parser made of it.
LF_PROBE = r"""
import json, sys, yaml
from llamafactory.hparams import get_train_args
for path in sys.argv[1:]:
    raw = yaml.safe_load(open(path))
    raw["use_cpu"] = True  # no GPU here: transformers refuses bf16 on CPU without it
    try:
        m, d, t, f, g = get_train_args(dict(raw))
        got = dict(batch_size=t.per_device_train_batch_size, grad_accum=t.gradient_accumulation_steps,
                   seq_len=d.cutoff_len, bf16=t.bf16, fp16=t.fp16, lora_rank=f.lora_rank if f.finetuning_type
                   == "lora" else None, lora_target=f.lora_target if f.finetuning_type == "lora" else None,
                   quant_bits=m.quantization_bit, gradient_checkpointing=not m.disable_gradient_checkpointing,
                   deepspeed=bool(t.deepspeed), stage=f.stage, method=f.finetuning_type)
        print(json.dumps({"path": path, "ok": True, "got": got}, default=str))
    except BaseException as exc:
        print(json.dumps({"path": path, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:300].replace("\n", " ")}))
"""

AX_PROBE = r"""
import json, os, sys, yaml
from axolotl.utils.config import normalize_config, validate_config
from axolotl.utils.dict import DictDefault
for path in sys.argv[1:]:
    raw = yaml.safe_load(open(path))
    raw["base_model"] = os.environ["MODEL_DIR"]  # the model's config.json, no download
    try:
        cfg = validate_config(DictDefault(raw))
        try:
            normalize_config(cfg)
            normalized = "ok"
        except BaseException as exc:  # normalize loads the model's config: no download here
            normalized = f"{type(exc).__name__}: {exc}"[:200].replace("\n", " ")
        got = dict(batch_size=cfg.micro_batch_size, grad_accum=cfg.gradient_accumulation_steps,
                   seq_len=cfg.sequence_len, bf16=cfg.bf16, fp16=cfg.fp16, lora_rank=cfg.lora_r,
                   lora_target=cfg.lora_target_modules or cfg.lora_target_linear,
                   quant_bits=4 if cfg.load_in_4bit else 8 if cfg.load_in_8bit else None,
                   gradient_checkpointing=bool(cfg.gradient_checkpointing), deepspeed=bool(cfg.deepspeed),
                   fsdp=bool(cfg.fsdp or cfg.fsdp_config), normalize=normalized)
        print(json.dumps({"path": path, "ok": True, "got": got}, default=str))
    except BaseException as exc:
        print(json.dumps({"path": path, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:300].replace("\n", " ")}))
"""


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([PROJECT_PY, "-m", "tui.cli", *args], capture_output=True, text=True, cwd=ROOT, env=env)


def flags(plan: dict) -> list[str]:
    return [x for k, v in plan.items() for x in (f"--{k.replace('_', '-')}", str(v))]


def memory_total(proc: subprocess.CompletedProcess) -> int | None:
    try:  # a plan over the GPU's memory exits non-zero with the same JSON
        data = json.loads(proc.stdout)
    except ValueError:
        return None
    return (data.get("estimate") or data).get("memory", {}).get("total")


def probe(framework: str, paths: list[str]) -> dict[str, dict]:
    python = VENVS[framework]
    if not Path(python).exists():
        return {p: {"ok": False, "error": f"{python} missing (see the docstring)"} for p in paths}
    code = LF_PROBE if framework == "llamafactory" else AX_PROBE
    model_dir = Path(tempfile.mkdtemp(prefix="ftplan-model-"))
    (model_dir / "config.json").write_text((ROOT / "profiles" / "models" / f"{MODEL}.json").read_text())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DISABLE_VERSION_CHECK": "1", "MODEL_DIR": str(model_dir)}
    # the DeepSpeed exports launch under torchrun (FORCE_TORCHRUN=1): the parser refuses them outside it, so they
    # parse as torchrun's one process would see them
    torchrun = dict(WORLD_SIZE="1", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="29533")
    rows = {}
    for ds in (False, True):
        group = [p for p in paths if ("\ndeepspeed:" in Path(p).read_text()) == ds]
        if not group:
            continue
        proc = subprocess.run([python, "-c", code, *group], capture_output=True, text=True,
                              env={**env, **torchrun} if ds and framework == "llamafactory" else env)
        for line in proc.stdout.splitlines():
            if line.startswith("{"):
                row = json.loads(line)
                rows[row.pop("path")] = row
        error = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        rows |= {p: {"ok": False, "error": error} for p in group if p not in rows}
    return rows


def compare(plan: dict, got: dict) -> list[str]:
    """The memory-relevant settings the parser read otherwise than the plan asked."""
    want = dict(batch_size=plan["batch_size"], grad_accum=plan["grad_accum"], seq_len=plan["seq_len"],
                bf16=plan["precision"].startswith("bf16"), deepspeed=bool(plan.get("zero")),
                quant_bits=4 if plan["method"] == "qlora" else None)
    if plan["method"] in ("lora", "qlora"):
        want["lora_rank"] = plan.get("lora_rank", 8)
    return [f"{k}: {got.get(k)!r} (plan {v!r})" for k, v in want.items() if got.get(k) != v]


def gib(total: int | None) -> str:
    return "n/a" if total is None else f"{total / 2**30:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite docs/export_roundtrip.md")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ftplan-roundtrip-"))
    jobs = []
    for framework in VENVS:
        for name, plan in PLANS:
            path = work / f"{framework}-{len(jobs)}.yaml"
            made = cli("export", "--model", MODEL, *flags(plan), "--format", framework, "-o", str(path), "--force")
            est = cli("estimate", "--model", MODEL, *flags(plan), "--gpu", GPU, "--json")
            pre = cli("preflight", str(path), "--gpus", str(plan["gpus"]), "--gpu", GPU, "--json") \
                if not made.returncode else made
            jobs.append((framework, name, plan, path, made, memory_total(est), memory_total(pre)))
    parsed = {}
    for framework in VENVS:
        parsed |= probe(framework, [str(j[3]) for j in jobs if j[0] == framework and not j[4].returncode])
    rows = []
    for framework, name, plan, path, made, planned, checked in jobs:
        if made.returncode:
            verdict, diffs = f"export refused: {made.stderr.strip()[:120]}", ""
        else:
            res = parsed[str(path)]
            verdict = "accepted" if res["ok"] else f"rejected: {res['error']}"
            diffs = "; ".join(compare(plan, res["got"])) if res["ok"] else ""
            if res["ok"] and res["got"].get("normalize", "ok") != "ok":
                verdict += f" (normalize_config: {res['got']['normalize']})"
        same = "n/a" if None in (planned, checked) else "yes" if planned == checked else "no"
        rows.append(f"| {framework} | {name} | {verdict} | {diffs or 'none'} | {gib(planned)} | {gib(checked)} "
                    f"| {same} |")
    text = "\n".join([
        "# Exports through the frameworks' own parsers",
        "",
        f"`python benchmarks/export_roundtrip.py --write` ({MODEL}, memory on {GPU}); environments and what each "
        "parser is given: the script's docstring. \"Differs\" lists the memory-relevant settings the parser read "
        "otherwise than the plan's flags; the last columns compare `ftplan estimate` for the flags with "
        "`ftplan preflight` on the export (GiB). The ZeRO-3 exports are parsed as torchrun's single process "
        "(their launch line uses FORCE_TORCHRUN=1; outside torchrun LLaMA-Factory refuses DeepSpeed). A total that "
        "differs is one the export says the framework runs otherwise (its header notes): axolotl trains a full "
        "bf16-mixed plan without DeepSpeed/FSDP as pure bf16 (no fp32 master weights), so preflight plans that.",
        "",
        "| framework | plan | parser | differs | estimate | preflight | same total |",
        "|---|---|---|---|---|---|---|",
        *rows, ""])
    print(text)
    if args.write:
        write_text_atomic(ROOT / "docs" / "export_roundtrip.md", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
