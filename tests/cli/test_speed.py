"""Speed benchmark (faceparse.bench): FLOP and memory counting, timing, tables, command."""

from __future__ import annotations

import csv

import pytest
import torch
from torch import nn

from faceparse import bench
from faceparse.cli import main
from faceparse.errors import FaceParseError


def test_count_flops_matches_hand_count():
    # conv 3->8, 3x3, 16x16 output (padding 1): 2 * Cout * Cin * k * k * H * W
    # linear 8->4 on 2 rows: 2 * 2 * 8 * 4
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
            self.fc = nn.Linear(8, 4, bias=False)

        def forward(self, x):
            return self.fc(self.conv(x).mean((2, 3)).expand(2, 8))

    flops = bench.count_flops(Net().eval(), torch.randn(1, 3, 16, 16))
    assert flops == 2 * 8 * 3 * 9 * 16 * 16 + 2 * 2 * 8 * 4


def test_peak_memory_tracks_live_tensors():
    def fn(x):
        a = x * 2  # 4 MiB
        b = a + 1  # 4 MiB, a still alive -> 8 MiB live
        del a
        c = b.view(-1)  # view: no new storage
        return c.sum()

    x = torch.randn(1024, 1024)
    mem = bench.PeakMemory()
    with torch.inference_mode(), mem:
        out = fn(x)
    assert mem.peak == 2 * 1024 * 1024 * 4  # a and b; the scalar comes after a is freed
    assert mem.live == 4  # only the returned scalar is alive
    del out
    assert mem.live == 0


def test_time_call_budget_and_repeats():
    calls = []
    times = bench.time_call(lambda: calls.append(1), repeats=4, warmup=2)
    assert len(times) == 4 and len(calls) == 6
    import time

    times = bench.time_call(lambda: time.sleep(0.02), repeats=50, warmup=0, budget_s=0.05)
    assert 1 <= len(times) <= 4


def test_matmul_peak_is_plausible():
    peak = bench.matmul_peak_flops(n=256, repeats=3)
    assert 1e8 < peak < 1e14


def test_resolve_models_patterns_and_errors():
    names = bench.resolve_models("unet,fpn,unet")
    assert names == ["unet", "fpn"]
    with pytest.raises(FaceParseError, match="matches no registered model"):
        bench.resolve_models("no_such_model_*")


def test_bench_model_row_is_complete_and_consistent():
    row = bench.bench_model("unet", size=32, repeats=1, batch=2, model_kwargs={"encoder": "resnet18"})
    assert "error" not in row, row
    model = bench.build_for_bench("unet", encoder="resnet18")
    assert row["params_m"] == pytest.approx(sum(p.numel() for p in model.parameters()) / 1e6)
    assert row["gflops"] * 1e9 == bench.count_flops(model, torch.randn(1, 3, 32, 32))
    weights = bench.parameter_bytes(model) / 2**20
    assert weights < row["peak_mem_b1_mib"] < row["peak_mem_b8_mib"]
    assert row["latency_b1_ms"] > 0 and row["throughput_b8_ips"] > 0


def test_bench_model_reports_errors_instead_of_raising():
    row = bench.bench_model("unet", size=32, repeats=1, model_kwargs={"encoder": "no_such_encoder"})
    assert "error" in row and row["model"] == "unet"


def test_bench_variants_ratios():
    row = bench.bench_variants(
        "unet", size=32, variants=["eager", "inference_mode", "channels_last"], repeats=1,
        model_kwargs={"encoder": "resnet18"},
    )  # fmt: skip
    assert "error" not in row, row
    assert row["inference_mode_speedup"] == pytest.approx(row["eager_ms"] / row["inference_mode_ms"])
    assert row["channels_last_maxdiff"] < 1e-3


def test_command_writes_markdown_csv_and_docs(tmp_path, capsys):
    docs = tmp_path / "models.md"
    docs.write_text(f"# Zoo\n\n{bench.DOCS_START}\nold\n{bench.DOCS_END}\n\ntail\n")
    rc = main(
        ["bench", "--models", "fpn", "--size", "32", "--repeats", "1", "--batch", "2",
         "--out-dir", str(tmp_path), "--tag", "t", "--docs", str(docs)]
    )  # fmt: skip
    assert rc == 0
    md = next(tmp_path.glob("speed_t_*.md")).read_text()
    assert "| fpn | 32 |" in md and "fp32 matmul peak measured" in md
    rows = list(csv.DictReader(next(tmp_path.glob("speed_t_*.csv")).open()))
    assert rows[0]["model"] == "fpn" and float(rows[0]["gflops"]) > 0
    assert 0 < float(rows[0]["peak_fraction"]) < 5
    text = docs.read_text()
    assert "old" not in text and "| fpn |" in text and text.endswith("tail\n")


def test_update_docs_table_needs_markers(tmp_path):
    p = tmp_path / "x.md"
    p.write_text("no markers")
    with pytest.raises(FaceParseError, match="markers"):
        bench.update_docs_table(p, "| a |")


def test_meta_count_matches_real_count_and_skips():
    params, flops = bench.meta_count("unet", 32, {"encoder": "resnet18"})
    model = bench.build_for_bench("unet", encoder="resnet18")
    assert params == sum(p.numel() for p in model.parameters())
    assert flops == bench.count_flops(model, torch.randn(1, 3, 32, 32))
    row = bench.bench_model("unet", size=32, model_kwargs={"encoder": "resnet18"}, max_gflops=flops / 1e9 / 2)
    assert "latency_b1_ms" not in row and "max-gflops" in row["note"] and row["gflops"] == flops / 1e9
    row = bench.bench_model("unet", size=32, model_kwargs={"encoder": "resnet18"}, skip_timing="too slow here")
    assert row["note"] == "too slow here" and row["params_m"] == params / 1e6


def test_batch_timing_skipped_when_over_budget():
    row = bench.bench_model("unet", size=32, repeats=1, batch=4, budget_s=1e-9, model_kwargs={"encoder": "resnet18"})
    assert row["latency_b1_ms"] > 0 and "throughput_b8_ips" not in row
    assert "batch 4 skipped" in row["note"]


def test_flop_count_equals_pytorch_flop_counter_and_works_where_it_fails():
    from torch.utils.flop_counter import FlopCounterMode

    model = bench.build_for_bench("fpn", encoder="resnet18")
    x = torch.randn(1, 3, 32, 32)
    ref = FlopCounterMode(display=False)
    with torch.no_grad(), ref:
        model(x)
    assert bench.count_flops(model, x) == ref.get_total_flops() > 0

    class TokensIn(nn.Module):  # a parameter passed as a submodule input (as SegFace's class tokens)
        def __init__(self) -> None:
            super().__init__()
            self.tokens = nn.Parameter(torch.randn(4, 8))
            self.inner = nn.Linear(8, 8)

        def forward(self, x):
            return self.inner(self.tokens) @ x

    assert bench.count_flops(TokensIn().eval(), torch.randn(8, 3)) == 2 * 4 * 8 * 8 + 2 * 4 * 8 * 3
