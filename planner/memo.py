"""Memoization on a model's identity, for what the planner derives from a `ModelSpec` again and again.

`ModelSpec` and its blocks are frozen pydantic models, but they do not hash (a block's `other_params` is a dict)
and hashing them field by field would cost more than some of the work saved. One estimate asks for the same
LoRA targets or parameter counts many times (the layout, the activation replay, the optimizer, the last block's
backward), and a `--max-batch` search runs a dozen estimates of one model: each is computed once per spec object.
Memoized: `params.count_params`, `methods.lora_targets`, `methods.block_training` and `methods.layout` (per
shape-free plan, `Plan.shape_free`), `memory._model_states` (weights, gradients, optimizer state and step
temporaries), `optimizers.trainable_tensors` (per shape-free plan) and `memory._replay` (the activation
replay, per block trainings and replay options).

A cache entry keeps the objects it was keyed on alive, so their `id` cannot be reused by another object while the
entry exists; a hit also checks identity. Results are shared between callers: they must be immutable (tuples,
frozensets, frozen models).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import TypeVar

R = TypeVar("R")

MAXSIZE = 64  # entries per function: a few specs (a stage's copy, the TUI's models) x a few targets each
_CACHES: list[dict] = []
# the TUI plans in worker threads: a lookup is one atomic dict.get, but evicting iterates the dict, which another
# thread's insertion would break
_WRITE = threading.Lock()


def clear() -> None:
    """Forget every memoized result (benchmarks measure the work a new plan costs with it)."""
    with _WRITE:
        for cache in _CACHES:
            cache.clear()


def by_identity(objects: int) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Memoize `fn(*args)` on the identity of its first `objects` arguments and the values of the rest (which
    must hash). The oldest entry goes when the cache is full."""

    def wrap(fn: Callable[..., R]) -> Callable[..., R]:
        cache: dict[tuple, tuple[tuple, R]] = {}
        _CACHES.append(cache)

        @functools.wraps(fn)
        def cached(*args):
            pinned = args[:objects]
            key = (*map(id, pinned), *args[objects:])
            hit = cache.get(key)
            if hit is not None and all(a is b for a, b in zip(hit[0], pinned, strict=True)):
                return hit[1]
            value = fn(*args)
            with _WRITE:
                if len(cache) >= MAXSIZE:
                    del cache[next(iter(cache))]
                cache[key] = (pinned, value)
            return value

        cached.cache_clear = cache.clear  # type: ignore[attr-defined]
        return cached

    return wrap
