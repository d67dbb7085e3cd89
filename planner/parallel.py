"""How model parallelism divides a GPU's share of the model: tensor, expert, pipeline and context parallel.

The ranks of a run form a grid, as Megatron-Core lays it out (megatron/core/parallel_state.py,
`initialize_model_parallel`: world = TP x CP x DP x PP, experts as EP x expert-TP inside TP x CP x DP):

* **tensor parallel** (Shoeybi et al. 2019) splits each block linear by rows or columns, and the embedding and
  LM head by vocabulary (Megatron's VocabParallelEmbedding / ColumnParallelLinear); norms stay whole on every
  rank. With sequence parallel (Korthikanti et al. 2022), which Megatron recommends beside TP, every saved
  activation is split too ("34/t" and "5as/ht" of sbh per layer);
* **expert parallel** places `num_experts / EP` routed experts on a rank, each split by the expert-TP size,
  which Megatron-Core defaults to the TP size (`expert_tensor_parallel_size`);
* **pipeline parallel** gives each stage `layers / PP` decoder layers, the first the embedding and the last the
  final norm and LM head; under 1F1B the first stage keeps PP micro-batches in flight, so its activations are a
  whole model's worth (Korthikanti et al. 2022, section 4.2.3): activations do not shrink with PP;
* **context parallel** (ring attention, Liu et al. 2023; DeepSpeed-Ulysses, Jacobs et al. 2023) gives each rank
  `seq_len / CP` tokens of every sequence: ring attention keeps the local chunk's queries, keys and values;
  Ulysses all-to-alls to the whole sequence with `heads / CP` heads, the same bytes. Ranks of a CP group read
  the same sequences, so they do not add to the data-parallel degree (axolotl's sequence-parallel groups,
  accelerate's ParallelismConfig cp_size, Megatron's CP); ZeRO / FSDP / the distributed optimizer shard over
  DP x CP ranks (accelerate's `dp_shard_cp` mesh, Megatron's data-parallel-with-CP group).
"""

from __future__ import annotations

from planner.params import ParamCounts
from planner.plan import Plan


def model_share(counts: ParamCounts, plan: Plan) -> tuple[int, int]:
    """(parameters on the most loaded rank, parameters in the model): the fraction of every per-parameter
    component (weights, gradients, master weights, optimizer state) one rank holds under TP x EP x PP, before
    ZeRO-style sharding over the data-parallel ranks. The heavier pipeline stage is the first (embedding) or
    the last (final norm + LM head); layers divide evenly (a remainder goes to the last stages, as Megatron's
    uneven split would); a layer's norms are replicated across TP ranks."""
    tp, ep, pp = plan.tensor_parallel, plan.expert_parallel, plan.pipeline_parallel
    if tp == ep == pp == 1:
        return 1, 1
    layers = len(counts.per_layer) or 1
    in_layers = sum(counts.per_layer)
    final_norm = max(0, counts.total - in_layers - counts.embeddings - counts.head)
    layer_norms = counts.norms - final_norm
    split = in_layers - counts.experts - layer_norms  # attention, dense MLP, router: split by TP
    per_stage = -(-layers // pp)
    body = (_up(split, tp) + _up(counts.experts, tp * ep) + layer_norms) * per_stage // layers
    first = _up(counts.embeddings, tp)
    if pp == 1:
        return body + first + _up(counts.head, tp) + final_norm, counts.total
    # a tied head keeps its own copy of the word embeddings on the last stage (Megatron's shared embedding)
    last = _up(counts.head or counts.embeddings - counts.position_embeddings, tp) + final_norm
    return body + max(first, last), counts.total


def _up(a: int, b: int) -> int:
    return -(-a // b)


def scaled(nbytes: int, share: tuple[int, int]) -> int:
    num, den = share
    return nbytes if num == den else _up(nbytes * num, den)


def rank_seq_len(plan: Plan, seq_len: int) -> int:
    """Tokens of each sequence whose activations one rank keeps: split over the context-parallel group, then
    over the tensor-parallel group by sequence parallel (frameworks pad to a multiple of the sizes)."""
    return _up(seq_len, plan.context_parallel * plan.tensor_parallel)


def assumptions(plan: Plan, host_params: int = 0, host_per_node: int = 0) -> list[str]:
    """What the estimate approximates for the parallel layout and the parameter offload (empty for plain data
    parallel); `host_*` are the breakdown's host-memory figures."""
    from planner.units import fmt_gib

    out = []
    if plan.offload_params:
        out.append(f"parameter offload: {fmt_gib(host_params)} of parameter shards"
                   + (" and their gradients" if plan.offload_optimizer else "") + " per GPU in host memory; the "
                   "GPU holds the gathered unit and the prefetched next one (ZeRO-3 / FSDP2 all-gather)")
    if host_per_node and (plan.nodes > 1 or plan.per_node_gpus > 1):
        out.append(f"host memory per node ({plan.per_node_gpus} GPUs): {fmt_gib(host_per_node)} of offloaded "
                   "state, besides each process's own (pinned buffers, the model's load)")
    if plan.nodes > 1 or (plan.gpus > 1 and (plan.model_parallel > 1 or plan.context_parallel > 1)):
        out.append(f"layout: {plan.gpus} GPUs on {plan.nodes} node(s), {plan.per_node_gpus} per node = TP "
                   f"{plan.tensor_parallel} x PP {plan.pipeline_parallel} x CP {plan.context_parallel} x DP "
                   f"{plan.data_parallel}; ZeRO/FSDP shard over DP x CP = {plan.shard_ranks} ranks; global batch "
                   f"{plan.global_batch} = micro-batch x accumulation x DP")
    if plan.context_parallel > 1:
        out.append(f"context parallel {plan.context_parallel}: each GPU holds seq_len / CP tokens of every "
                   "sequence (ring attention or Ulysses: the same bytes for memory-efficient attention); eager "
                   "attention's score matrix is not split that way under Ulysses, so it is understated there")
    if plan.tensor_parallel > 1 or plan.expert_parallel > 1 or plan.pipeline_parallel > 1:
        out.append(f"model parallel (Megatron-Core layout, approximated on the Hugging Face model): linears, "
                   f"embedding and LM head split by TP {plan.tensor_parallel}, norms replicated; routed experts by "
                   f"EP {plan.expert_parallel} x expert-TP (= TP); layers by PP {plan.pipeline_parallel}, the "
                   "heavier end stage counted; activations and logits split by TP (sequence parallel assumed), "
                   "not by PP (1F1B's first stage keeps PP micro-batches); gradients in the parameters' dtype in "
                   "Megatron's one buffer (its bf16 runs accumulate them in fp32: understated); pipeline and TP "
                   "communication buffers are not counted")
    return out
