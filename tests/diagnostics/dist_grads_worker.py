"""Run under `torch.distributed.run --nproc_per_node 2`: one step of a tiny Llama under FSDP2 or DeepSpeed ZeRO
1/2/3 on CPU (gloo), each rank on its own row of the batch, measured by the GradMonitor; rank 0 writes what it
measured as JSON. tests/diagnostics/test_distributed_grads.py compares it with one process on the whole batch."""

from __future__ import annotations

import json
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM

CONFIG = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2)
BATCH = (2, 16)
LR = 1e-2


def model_and_batch():
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**CONFIG))
    ids = torch.randint(0, CONFIG["vocab_size"], BATCH, generator=torch.Generator().manual_seed(1))
    return model, ids


def fsdp2(rank: int) -> dict:
    from torch.distributed.fsdp import fully_shard

    from diagnostics.monitor import GradMonitor
    from diagnostics.sharded import detect

    model, ids = model_and_batch()
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    monitor = GradMonitor(model, access=detect(model))
    row = ids[rank:rank + 1]
    model(input_ids=row, labels=row).loss.backward()
    stats = monitor.finish(monitor.after_backward(None))
    monitor.before_step()
    optimizer.step()
    update = monitor.after_step()
    return {"access": monitor.access.name, "layer_norms": stats.layer_norms, "total": stats.total_norm,
            "update_ratio": update.update_ratio}


def zero(rank: int, stage: int) -> dict:
    import deepspeed

    from diagnostics.monitor import GradMonitor
    from diagnostics.sharded import detect

    model, ids = model_and_batch()
    config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "gradient_clipping": 1e-3,
              "zero_optimization": {"stage": stage},
              "optimizer": {"type": "AdamW", "params": {"lr": LR, "torch_adam": True}}}
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
    monitor = GradMonitor(engine.module, access=detect(engine.module, zero_stage=stage))
    row = ids[rank:rank + 1]
    engine.backward(engine(input_ids=row, labels=row).loss)
    # clipping is the engine's (gradient_clipping above): the monitor must report the pre-clip norm, untouched
    stats = monitor.finish(monitor.after_backward(1e-3))
    engine.step()
    return {"access": monitor.access.name, "layer_norms": stats.layer_norms, "total": stats.total_norm}


def main() -> None:
    mode, out = sys.argv[1], sys.argv[2]
    if mode == "fsdp2":
        torch.distributed.init_process_group("gloo")
        rank = torch.distributed.get_rank()
        result = {"fsdp2": fsdp2(rank)}
    else:
        # DeepSpeed's optional shared-memory all-reduce is a C++ extension compiled on first use (minutes on a
        # small machine); gloo does the same reduction, so the test runs without it
        import deepspeed
        import deepspeed.comm.torch

        sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None
        deepspeed.init_distributed(dist_backend="gloo")
        rank = torch.distributed.get_rank()
        result = {f"zero{stage}": zero(rank, stage) for stage in (1, 2, 3)}
    if rank == 0:
        with open(out, "w") as f:
            json.dump(result, f)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
