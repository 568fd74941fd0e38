"""What a model costs at batch 1: parameters, bytes, FLOPs, peak activation memory, latency, energy.

FLOPs come from torch.utils.flop_counter (convolutions and matrix products, 2 per multiply-add).
Peak activation memory is observed, not estimated: a dispatch mode sees every tensor an operator
allocates and every storage freed, during one real forward pass. Energy is estimated with a
documented linear model unless RAPL counters are readable, then measured.
"""

from __future__ import annotations

import statistics
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from racmkd.config import EnergyModel
from racmkd.measure.timing import estimated_energy_joules, percentiles, rapl_domains, wall_times_ms
from racmkd.utils import torch_threads


def model_bytes(model: nn.Module) -> dict[str, int]:
    """Parameter count, fp32 parameter bytes (the tier budgets' measure) and fp32 state bytes
    (parameters plus buffers such as BatchNorm statistics: what a checkpoint stores)."""
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for b in model.buffers() if b.is_floating_point())
    return {"params": params, "param_bytes_fp32": 4 * params, "bytes_fp32": 4 * (params + buffers)}


def count_flops(model: nn.Module, inputs: dict[str, torch.Tensor]) -> int:
    """FLOPs of one forward pass on `inputs` (batch 1 for the report)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(inputs)
    return int(counter.get_total_flops())


class _ActivationTracker(TorchDispatchMode):
    """Tracks bytes of live tensor storages created inside the mode: current, peak and total written.
    Storages in `weights` are not activations: a view of a parameter (`aten.t` of a Linear's weight)
    comes out of an op like a new tensor, and counting it would add the weights to the activations."""

    def __init__(self, weights: set[int] | None = None) -> None:
        super().__init__()
        self.weights = weights or set()
        self.live: dict[int, int] = {}
        self.current = self.peak = self.written = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - torch's protocol
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                key = storage.data_ptr()
                if key in self.live or key in self.weights or storage.nbytes() == 0:
                    continue
                self.live[key] = storage.nbytes()
                self.current += storage.nbytes()
                self.written += storage.nbytes()
                self.peak = max(self.peak, self.current)
                weakref.finalize(storage, self._release, key)
        return out

    def _release(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)


def activation_memory(model: nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, int]:
    """Peak bytes held by activations during one forward pass (the inputs included) and the total
    bytes of tensors written, which the energy model counts as memory traffic."""
    input_bytes = sum(x.numel() * x.element_size() for x in inputs.values())
    tracker = _ActivationTracker({t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())})
    with torch.no_grad(), tracker:
        model(inputs)
    return {"peak_activation_bytes": input_bytes + tracker.peak, "activation_bytes_written": tracker.written}


def time_calls(fn: Callable[[], Any], warmup: int, iters: int, threads: int = 1) -> list[float]:
    """Wall times in ms of `iters` calls of `fn()`, after `warmup` calls, on `threads` threads."""
    with torch_threads(threads), torch.inference_mode():
        return wall_times_ms(fn, warmup, iters)


def latency_ms(fn: Callable[[], Any], warmup: int, iters: int, threads: int = 1) -> dict[str, float]:
    """Median and 95th percentile wall time of `fn()`, after `warmup` calls, on `threads` threads."""
    return percentiles(time_calls(fn, warmup, iters, threads))


def latency_round_robin(
    subjects: dict[str, Callable[[], Any]], warmup: int, iters: int, rounds: int, threads: int = 1, keep_rounds: bool = False
) -> dict[str, dict[str, Any]]:
    """Latency of several callables measured in turn: each is warmed up (`warmup` calls), then
    `rounds` rounds time `iters / rounds` calls of each. A passing disturbance of the machine then
    hits every subject alike instead of one of them, if the rounds are short: give them about
    `CALLS_PER_ROUND` calls (`rounds_for`). `keep_rounds` adds each round's median ("rounds"),
    which pair up across subjects for `clearly_faster`."""
    samples: dict[str, list[float]] = {name: [] for name in subjects}
    medians: dict[str, list[float]] = {name: [] for name in subjects}
    per_round = max(1, iters // max(rounds, 1))
    for fn in subjects.values():
        time_calls(fn, warmup, 0, threads)
    for _ in range(max(rounds, 1)):
        for name, fn in subjects.items():
            times = time_calls(fn, 0, per_round, threads)
            samples[name] += times
            medians[name].append(statistics.median(times))
    return {name: {**percentiles(times), **({"rounds": medians[name]} if keep_rounds else {})} for name, times in samples.items()}


# Two timings closer than this are a tie, whatever the rounds say: a 5% gain is not worth a choice.
LATENCY_TIE = 0.05
# ...and a faster p50 counts only when it is faster in this share of the paired rounds too. Two
# equally fast subjects win 80% of 30 rounds with probability 0.0007 (a sign test); a bench run
# took a tier's fp32 model (0.047 ms) over its int8-weights twin (0.052 ms, the same float graph
# once loaded) and deployed twice the bytes on a p50 difference of 10%.
ROUNDS_WON = 0.8


def clearly_faster(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Timings a (from `latency_round_robin`) beat timings b beyond noise: a p50 more than
    `LATENCY_TIE` lower and, where both kept their rounds, a lower median in `ROUNDS_WON` of them."""
    if a["p50"] * (1 + LATENCY_TIE) >= b["p50"]:
        return False
    rounds_a, rounds_b = a.get("rounds", []), b.get("rounds", [])
    if not rounds_a or len(rounds_a) != len(rounds_b):  # not timed in the same rounds: the p50s decide
        return True
    return sum(x < y for x, y in zip(rounds_a, rounds_b, strict=True)) >= ROUNDS_WON * len(rounds_a)


# Timed calls of one subject in a round. Three rounds of 100 calls of a 0.06 ms model are 6 ms
# each: a disturbance of a few ms can cover most of one candidate's calls and none of another's.
# A bench run timed the high tier's int8-weights model at 0.100 ms and its fp32 model at 0.071
# (the same float graph once loaded; timed again, 0.058 both). Measured on those two models, 300
# calls each, 40 repetitions: with 3 rounds their p50 ratio strayed by up to 35% (sd of its log
# 0.010-0.048), with 30 rounds by 2% (0.003-0.005); beside a process busy 8 ms in every 40 on the
# same core, 13 of 40 ratios left 0.95-1.05 with 3 rounds (0.71-1.54), 1 of 40 with 30 (0.93-1.02).
CALLS_PER_ROUND = 10


def rounds_for(iters: int) -> int:
    """Rounds of about CALLS_PER_ROUND timed calls each for `iters` calls per subject."""
    return max(1, iters // CALLS_PER_ROUND)


def _read_uj(path: Path) -> int:
    return int(path.read_text())


def measured_energy_joules(fn: Callable[[], Any], iters: int, root: Path) -> float | None:
    """Energy per call of `fn` from RAPL package counters (the whole package: other work on the
    machine counts too), or None where no counter is readable."""
    domains = rapl_domains(root)
    if not domains:
        return None
    before = [_read_uj(p) for p in domains]
    with torch.inference_mode():
        for _ in range(iters):
            fn()
    total = 0
    for path, start in zip(domains, before):
        end = _read_uj(path)
        if end < start:  # the counter wrapped
            limit_file = path.parent / "max_energy_range_uj"
            end += _read_uj(limit_file) if limit_file.exists() else 0
        total += end - start
    return total * 1e-6 / iters


def energy_per_call_mj(
    fn: Callable[[], Any], iters: int, rapl_root: Path, flops: float, bytes_moved: float, seconds: float, model: EnergyModel
) -> tuple[float, str]:
    """Energy per call of `fn` in mJ and where it came from: the RAPL counters where readable
    ("measured", over `iters` calls), else the energy model's estimate from FLOPs, bytes moved and
    the call's measured time ("estimated")."""
    measured = measured_energy_joules(fn, iters, rapl_root)
    if measured is not None:
        return measured * 1e3, "measured"
    return estimated_energy_joules(flops, bytes_moved, seconds, model) * 1e3, "estimated"
