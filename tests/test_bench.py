"""The benchmark package (src/bench/): every script answers --help, and the helpers they share
(synthetic gradients, peak memory, timing) do what the figures rely on."""
import importlib

import pytest
import torch

from src.bench.common import PeakRSS, best_of, synthetic, synthetic_matrix

SCRIPTS = ["quality", "speed", "selection", "lm_head", "gpu_smoke"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_benchmark_is_a_script_with_help(name, capsys):
    module = importlib.import_module(f"src.bench.{name}")
    with pytest.raises(SystemExit) as e:
        module.main(["--help"])
    assert e.value.code == 0 and "usage:" in capsys.readouterr().out
    assert f"src.bench.{name}" in importlib.import_module("src.bench").__doc__


def test_synthetic_streams_the_matrix_it_builds_in_memory():
    G, sq, t = synthetic_matrix(300, 16, seed=3)
    parts = list(synthetic(300, 16, seed=3))
    *blocks, (end, target, _) = parts
    assert end is None and torch.equal(target, t)
    assert torch.equal(torch.cat([g for _, g, _ in blocks]), G[0]) and G.dtype == torch.float16
    torch.testing.assert_close(sq[0], G[0].float().pow(2).sum(-1))  # the stored rows' norms, as the pass stores them
    assert not torch.equal(synthetic_matrix(300, 16, seed=4)[0], G)


def test_peak_rss_sees_a_block_that_allocates_and_frees():
    with PeakRSS() as mem:
        x = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        del x
    if mem.exact:
        assert mem.growth >= 32 * 2**20 and mem.peak >= mem.before
    else:
        assert mem.growth is None and mem.upper_bound is not None


def test_best_of_keeps_the_fastest_call_and_the_result(monkeypatch):
    import src.bench.common as common

    ticks = iter([0.0, 5.0, 10.0, 12.0, 20.0, 23.0])  # three calls taking 5, 2 and 3 seconds
    monkeypatch.setattr(common.time, "perf_counter", lambda: next(ticks))
    calls = []
    seconds, out = best_of(lambda: calls.append(1) or len(calls), reps=3)
    assert len(calls) == 3 and out == 3 and seconds == 2.0
