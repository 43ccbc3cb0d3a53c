"""faceparse.perf: matmul peaks, per-precision rows against both peaks, top operators (not timed)."""

from __future__ import annotations

import pytest
import torch

from faceparse import perf
from faceparse.export import build_tiny


def test_matmul_peaks_are_positive_flop_rates():
    peaks = perf.matmul_peaks(n=64, repeats=2)
    assert set(peaks) == {"fp32", "bf16"}
    assert all(0 < v < 1e15 for v in peaks.values())


def test_bench_precisions_row_is_consistent():
    model, size = build_tiny("consensus_net")
    peaks = {"fp32": 1e11, "bf16": 4e11}
    row = perf.bench_precisions(
        "consensus_net", ("fp32", "bf16"), size=size, batch=2, repeats=2, peaks=peaks, model=model
    )
    assert row["input_size"] == size and row["gflops"] > 0
    for p in ("fp32", "bf16"):
        # images/s, GFLOP/s and the peak fractions all follow from the one median time
        assert row[f"{p}_ips"] == pytest.approx(2 / (row[f"{p}_ms"] / 1e3))
        assert row[f"{p}_gflops_s"] == pytest.approx(row["gflops"] * row[f"{p}_ips"])
        assert row[f"{p}_of_fp32_peak"] == pytest.approx(row[f"{p}_gflops_s"] * 1e9 / 1e11)
        assert row[f"{p}_of_bf16_peak"] == pytest.approx(row[f"{p}_of_fp32_peak"] / 4)
    assert row["fp32_speedup"] == pytest.approx(1.0)
    assert row["bf16_speedup"] == pytest.approx(row["fp32_ms"] / row["bf16_ms"])
    titles = [t for _, t, _ in perf.precision_columns(("fp32", "bf16"))]
    assert "bf16 / fp32 speed" in titles and "fp32 / fp32 speed" not in titles


def test_top_operators_find_the_convolution_of_a_conv_net():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 7, padding=3), torch.nn.ReLU())
    ops = perf.top_operators(net, torch.randn(2, 3, 96, 96), k=3)
    assert 1 <= len(ops) <= 3
    assert "conv" in ops[0]["op"] or "mkldnn" in ops[0]["op"]
    assert sum(o["share"] for o in ops) <= 1.0 + 1e-6
    assert ops == sorted(ops, key=lambda o: -o["self_ms"])
    md = perf.operators_markdown("net", ops)
    assert md.count("\n| `") == len(ops)


def test_dense_share_counts_only_gemm_class_kernels():
    ops = [
        {"op": "aten::mkldnn_convolution", "calls": 1, "self_ms": 6.0, "share": 0.6},
        {"op": "aten::addmm", "calls": 1, "self_ms": 1.0, "share": 0.1},
        {"op": "aten::copy_", "calls": 1, "self_ms": 3.0, "share": 0.3},
    ]
    assert perf.dense_share(ops) == pytest.approx(0.7)


def test_bench_precisions_profiles_the_warm_fp32_runner():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(32, 4, 1))
    net.label_set = None
    row = perf.bench_precisions("convnet", ("fp32",), size=48, batch=2, repeats=1, model=net, profile=2)
    assert len(row["top_ops"]) == 2
    assert any("conv" in o["op"] for o in row["top_ops"])
    assert 0.0 < row["dense_share"] <= 1.0 + 1e-6
