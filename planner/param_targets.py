"""LoRA on nn.Parameter tensors: peft's `target_parameters` (axolotl's and TRL's `lora_target_parameters`).

peft (tuners/tuners_utils.py, `_inject_parameters`) wraps every parameter whose `module.param` name equals a
target or ends with `.` + target in a ParamWrapper (tuners/lora/layer.py). ftplan models the tensors such names
reach in transformers 5's MoE blocks: the fused 3-D experts (`mlp.experts.gate_up_proj`, `mlp.experts.down_proj`)
and the router's 2-D weight (`mlp.gate.weight`). Each wrapped tensor gets the plain rank r: only peft's own
re-pointing of v4 names (`gate_proj` + `up_proj` -> `gate_up_proj`) doubles the fused tensor's rank, through the
rank_pattern it writes (utils/transformers_weight_conversion.py).
"""

from __future__ import annotations

from planner.errors import FtplanError

# the last name component -> the MoE tensor (planner.methods.wrapped_tensors) it reaches
_EXPERT_PARAMS = {"gate_up_proj": "gate_up", "down_proj": "down"}
_ROUTER = ("gate", "weight")  # mlp.gate.weight: the router's (E, d) weight
KNOWN = "mlp.experts.gate_up_proj, mlp.experts.down_proj, mlp.gate.weight"


def tensor_of(name: str) -> str | None:
    """The MoE tensor a target_parameters name reaches ("router", "gate_up", "down"), or None."""
    parts = name.split(".")
    if parts[-1] in _EXPERT_PARAMS:
        return _EXPERT_PARAMS[parts[-1]]
    return "router" if tuple(parts[-2:]) == _ROUTER else None


def split(value) -> list[str]:
    """The names of a comma list or list, stripped, empty ones dropped."""
    if value is None or value is False:
        return []
    names = value.split(",") if isinstance(value, str) else list(value)
    return [s for s in (str(n).strip() for n in names) if s]


def parse(value) -> str:
    """The names as a comma list in canonical (sorted, as peft matches them) order; names ftplan does not model
    refused."""
    names = sorted(set(split(value)))
    unknown = [n for n in names if tensor_of(n) is None]
    if unknown:
        raise FtplanError(f"{unknown[0]!r} is not an MoE parameter ftplan models; give a comma list of "
                          f"{KNOWN} (or their suffixes), or none", field="lora_target_parameters")
    return ",".join(names)


def modelled(value) -> tuple[str, list[str]]:
    """A config's names as the plan's (parsed) value, and the names ftplan does not model (a reader warns)."""
    names = split(value)
    unknown = [n for n in names if tensor_of(n) is None]
    return parse([n for n in names if n not in unknown]), unknown


def wrapped(value: str) -> frozenset[str]:
    """The MoE tensors the (parsed) names reach."""
    return frozenset(t for n in split(value) if (t := tensor_of(n)))
