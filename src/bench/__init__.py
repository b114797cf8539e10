"""Benchmarks: scripts that measure, side by side, apart from the math they measure. Each is a script,
not a test; every figure it prints is measured in that run.

    python -m src.bench.quality    # make bench-*: a task over several random seeds, mean ± std per selector
    python -m src.bench.speed      # make bench-speed: gradient pass vs forward, selection, pass RSS, projections
    python -m src.bench.selection  # make bench-select: selection vs the memory-bandwidth limit, greedy variants
    python -m src.bench.lm_head    # factored vs dense projected LM-head gradients (speed.py's part d)
    python -m src.bench.gpu_smoke  # make gpu-smoke: the pipeline and corpus-scale selection on a CUDA device

``common.py`` holds what they share: synthetic gradients, peak-RSS measurement, timing, child processes.
Quality tables are built by ``src.results``, the same table the entry point and the sweep report print.
"""
