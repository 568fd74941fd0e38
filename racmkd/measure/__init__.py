"""What running a model costs, measured: wall time and its percentiles, energy (estimated, or read
from RAPL counters), the machine's description (timing.py, without PyTorch: the edge install's
profiler needs it), and a PyTorch model's parameters, bytes, FLOPs, peak activation memory and
latency (cost.py).

It sits below every stage that reports costs (compression's per-step logs, the device profiler, the
edge runtime's variant table, the evaluation report), so none of them reaches up into another."""
