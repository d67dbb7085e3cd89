"""`Plan`: the training settings an estimate is made for.

Field names follow the CLI flags; LLaMA-Factory's keys map onto them in the
preflight reader. Validation errors name the flag and the fix.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from planner.errors import FtplanError
from planner.units import GIB

Method = Literal["full", "freeze", "lora", "qlora"]
Precision = Literal["fp32", "bf16", "bf16-mixed", "fp16-mixed"]
Optimizer = Literal["adamw", "adamw-fused", "adamw-8bit", "paged-adamw-8bit", "adafactor", "sgd", "sgd-momentum"]
AttentionKernel = Literal["eager", "sdpa", "flash"]

METHODS: tuple[str, ...] = Method.__args__
PRECISIONS: tuple[str, ...] = Precision.__args__
OPTIMIZERS: tuple[str, ...] = Optimizer.__args__
ATTENTION_KERNELS: tuple[str, ...] = AttentionKernel.__args__

# Assumed when nothing is measured: PyTorch's CUDA context with lazy module loading
# is 0.3-0.6 GiB on recent GPUs (cuBLAS/cuDNN handles included), and the caching
# allocator reserves some memory beyond what is allocated (fragmentation).
DEFAULT_CUDA_CONTEXT = GIB // 2
DEFAULT_FRAGMENTATION = 0.08


class Plan(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    method: Method = "full"
    precision: Precision = "bf16-mixed"
    optimizer: Optimizer = "adamw"
    batch_size: int = Field(1, description="micro-batch per GPU")
    seq_len: int = 1024
    grad_accum: int = 1
    gradient_checkpointing: bool = False
    attention: AttentionKernel = "sdpa"
    lora_rank: int = 8
    lora_target: str = "all"
    lora_dropout: float = 0.0
    freeze_trainable_layers: int = 2
    quant_bits: Literal[4, 8] | None = None  # quantized base weights (QLoRA); None with qlora means 4
    double_quant: bool = True
    gpus: int = 1
    zero: Literal[0, 1, 2, 3] = 0
    offload_optimizer: bool = False
    fused_loss: bool = False  # fused linear cross-entropy (Liger / Cut Cross-Entropy): no full logits
    optimizer_in_backward: bool = False  # torchtune's optimizer_in_bwd: step each parameter in its grad hook
    cuda_context: int = DEFAULT_CUDA_CONTEXT
    cuda_context_measured: bool = False
    fragmentation: float = DEFAULT_FRAGMENTATION
    device: Literal["cuda", "cpu"] = "cuda"

    @model_validator(mode="before")
    @classmethod
    def _lora_on_quantized_base_is_qlora(cls, data):
        # LLaMA-Factory's finetuning_type: lora + quantization_bit: 4 is QLoRA
        if isinstance(data, dict) and data.get("method") == "lora" and data.get("quant_bits"):
            data = {**data, "method": "qlora"}
        return data

    @model_validator(mode="after")
    def _check(self) -> Plan:
        if self.quant_bits and self.method in ("full", "freeze"):
            raise FtplanError(
                f"--quant-bits {self.quant_bits} with --method {self.method}: quantized weights cannot be trained; "
                "use --method qlora (LoRA adapters on the quantized base) or drop --quant-bits"
            )
        for flag, value in (("--batch-size", self.batch_size), ("--seq-len", self.seq_len),
                            ("--grad-accum", self.grad_accum), ("--gpus", self.gpus),
                            ("--lora-rank", self.lora_rank)):
            if value < 1:
                raise FtplanError(f"{flag}: must be at least 1, got {value}")
        if self.freeze_trainable_layers == 0 and self.method == "freeze":
            raise FtplanError("--freeze-trainable-layers: 0 trains nothing; use N > 0 (last N layers) or -N (first N)")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise FtplanError(f"--lora-dropout: must be in [0, 1), got {self.lora_dropout}")
        if not 0.0 <= self.fragmentation < 1.0:
            raise FtplanError(f"--fragmentation: must be in [0, 1), got {self.fragmentation}")
        if self.cuda_context < 0:
            raise FtplanError("--cuda-context: must not be negative")
        if self.zero and self.gpus == 1:
            # ZeRO over one GPU shards nothing; allowed (DeepSpeed runs it), but nothing is divided.
            pass
        if self.offload_optimizer and self.zero == 0:
            raise FtplanError("--offload-optimizer: needs ZeRO (--zero 1, 2 or 3), as DeepSpeed requires")
        if self.optimizer_in_backward and (self.grad_accum > 1 or self.zero):
            raise FtplanError("--optimizer-in-backward: steps each parameter as its gradient arrives, so it "
                              "cannot accumulate gradients or shard them; use --grad-accum 1 and --zero 0")
        return self

    @property
    def base_bits(self) -> int:
        """Bits of the quantized base weights under QLoRA."""
        return self.quant_bits or 4

    @property
    def tokens(self) -> int:
        """Tokens in one micro-batch: sequences are assumed padded or packed to `seq_len`."""
        return self.batch_size * self.seq_len

    @property
    def compute_dtype(self) -> str:
        return {"fp32": "fp32", "bf16": "bf16", "bf16-mixed": "bf16", "fp16-mixed": "fp16"}[self.precision]

    @property
    def mixed(self) -> bool:
        return self.precision.endswith("-mixed")

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.grad_accum * self.gpus

    @classmethod
    def build(cls, **fields) -> Plan:
        """Validate user input; errors come back as one FtplanError naming the flag."""
        try:
            return cls(**fields)
        except ValidationError as exc:
            first = exc.errors()[0]
            cause = (first.get("ctx") or {}).get("error")
            if isinstance(cause, FtplanError):
                raise cause from None
            where = ".".join(str(p) for p in first["loc"]) or "plan"
            raise FtplanError(f"--{where.replace('_', '-')}: {first['msg']}") from None

    def with_(self, **changes) -> Plan:
        """A validated copy (pydantic's model_copy skips validation)."""
        return Plan.build(**{**self.model_dump(), **changes})
