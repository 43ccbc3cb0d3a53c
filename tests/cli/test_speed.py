"""Speed measurement (faceparse.profiling), the `faceparse bench` table and the benchmarks/speed.py harness."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from faceparse import profiling as bench
from faceparse.cli import main
from faceparse.errors import FaceParseError

SPEED_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "speed.py"


@pytest.fixture(scope="module")
def speed():
    """benchmarks/speed.py, the zoo-wide harness (a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("benchmarks_speed", SPEED_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    assert weights < row["peak_mem_b1_mib"] < row["peak_mem_bn_mib"]
    assert row["latency_b1_ms"] > 0 and row["throughput_bn_ips"] > 0 and row["batch"] == 2


def test_bench_model_reports_errors_instead_of_raising():
    row = bench.bench_model("unet", size=32, repeats=1, model_kwargs={"encoder": "no_such_encoder"})
    assert "error" in row and row["model"] == "unet"


def test_bench_variants_ratios(speed):
    row = speed.bench_variants(
        "unet", size=32, variants=["eager", "inference_mode", "channels_last"], repeats=1,
        model_kwargs={"encoder": "resnet18"},
    )  # fmt: skip
    assert "error" not in row, row
    assert row["inference_mode_speedup"] == pytest.approx(row["eager_ms"] / row["inference_mode_ms"])
    assert row["channels_last_maxdiff"] < 1e-3


def test_command_prints_table_titled_by_batch_and_writes_only_to_out_dir(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "--models", "fpn", "--size", "32", "--repeats", "1", "--batch", "2"]) == 0
    out = capsys.readouterr().out
    assert "CPU throughput b2 (img/s)" in out and "peak mem b2 (MiB)" in out and "b8" not in out
    assert "| fpn | 32 |" in out
    assert not list(tmp_path.rglob("*")), "no --out-dir: nothing written"
    rc = main(["bench", "--models", "fpn", "--size", "32", "--repeats", "1", "--batch", "2",
               "--out-dir", str(tmp_path / "res"), "--tag", "t"])  # fmt: skip
    assert rc == 0
    md = next((tmp_path / "res").glob("speed_t_*.md")).read_text()
    assert "| fpn | 32 |" in md and "fp32 matmul peak measured" in md and "b2" in md
    rows = list(csv.DictReader(next((tmp_path / "res").glob("speed_t_*.csv")).open()))
    assert rows[0]["model"] == "fpn" and float(rows[0]["gflops"]) > 0
    assert 0 < float(rows[0]["peak_fraction"]) < 5


def test_command_rejects_bad_numbers_and_patterns(tmp_path, capsys):
    assert main(["bench", "--batch", "0"]) == 2
    assert "--batch must be > 0" in capsys.readouterr().err
    assert main(["bench", "--models", "no_such_*", "--repeats", "1"]) == 2
    assert "no_such_*" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["bench", "--models", "fpn", "--out-dir", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_script_writes_markdown_csv_and_docs(tmp_path, speed, capsys):
    docs = tmp_path / "models.md"
    docs.write_text(f"# Zoo\n\n{speed.DOCS_START}\nold\n{speed.DOCS_END}\n\ntail\n")
    rc = speed.main(
        ["--models", "fpn", "--size", "32", "--repeats", "1", "--batch", "2",
         "--out-dir", str(tmp_path), "--tag", "t", "--docs", str(docs)]
    )  # fmt: skip
    assert rc == 0
    md = next(tmp_path.glob("speed_t_*.md")).read_text()
    assert "| fpn | 32 |" in md and "fp32 matmul peak measured" in md and "CPU throughput b2" in md
    rows = list(csv.DictReader(next(tmp_path.glob("speed_t_*.csv")).open()))
    assert rows[0]["model"] == "fpn" and float(rows[0]["gflops"]) > 0
    assert 0 < float(rows[0]["peak_fraction"]) < 5
    text = docs.read_text()
    assert "old" not in text and "| fpn |" in text and text.endswith("tail\n")


def test_update_docs_table_needs_markers(tmp_path, speed):
    p = tmp_path / "x.md"
    p.write_text("no markers")
    with pytest.raises(FaceParseError, match="markers"):
        speed.update_docs_table(p, "| a |")


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
    assert row["latency_b1_ms"] > 0 and "throughput_bn_ips" not in row
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
