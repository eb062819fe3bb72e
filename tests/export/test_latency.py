"""Latency on onnxruntime: the search's measurement of a candidate and `facenas export`'s of its file."""

from __future__ import annotations

import io
import json
import sys

import onnx
import pytest
import torch
from typer.testing import CliRunner

from facenas.cli.main import app
from facenas.config import TargetConfig
from facenas.errors import ExportError, FacenasError
from facenas.export.card import card_path, read_card
from facenas.export.latency import Latency, LatencyError, arch_graph, arch_latency, onnx_latency
from facenas.export.onnx import export_onnx
from facenas.space.arch import OP_CONV, Arch, Profile
from facenas.space.count import count_macs
from tests.conftest import save_face_model

FACE = Profile(in_channels=3, stem_stride=2, reductions=3, head="embedding", embedding_dim=32, input_size=112)
TINY = Arch.uniform(8, 4, FACE)
FAST = TargetConfig(repeats=8, warmup=2)


def check_sane(latency: Latency, target: TargetConfig) -> None:
    assert 0 < latency.q25_ms <= latency.median_ms <= latency.q75_ms
    assert latency.spread_ms == pytest.approx(latency.q75_ms - latency.q25_ms)
    assert (latency.repeats, latency.threads, latency.batch, latency.precision) == (
        target.repeats, target.threads, target.batch, target.precision)
    record = json.loads(json.dumps(latency.to_dict()))
    assert record["spread_ms"] == pytest.approx(latency.spread_ms) and record["median_ms"] == latency.median_ms


def test_an_architecture_is_timed_with_the_targets_settings():
    target = TargetConfig(repeats=8, warmup=2, batch=3)
    check_sane(arch_latency(TINY, target), target)


def test_a_net_with_many_times_the_macs_is_slower():
    big = Arch.uniform(16, 6, FACE, op=OP_CONV)
    assert count_macs(big) > 10 * count_macs(TINY)  # measured ~10x slower; asked for only 2x on a busy machine
    small, large = arch_latency(TINY, FAST), arch_latency(big, FAST)
    assert large.median_ms > 2 * small.median_ms


def test_int8_times_the_quantised_graph():
    target = TargetConfig(repeats=5, warmup=1, precision="int8")
    check_sane(arch_latency(TINY, target), target)
    ops = {n.op_type for n in onnx.load_model_from_string(arch_graph(TINY, "int8")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_timing_leaves_the_global_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    arch_graph(TINY, seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_the_search_times_the_graph_that_export_writes(tmp_path):
    """Same wrapper, exporter and opset: the exported file and the search's in-memory model are one graph."""
    arch = save_face_model(tmp_path / "m.pt")
    report = export_onnx(tmp_path / "m.pt", tmp_path / "m.onnx", target=FAST)
    exported = onnx.load(str(tmp_path / "m.onnx")).graph
    searched = onnx.load_model_from_string(arch_graph(arch)).graph
    # Identity nodes stand for equal initialisers the exporter merged (this checkpoint's untouched embedding batch
    # norm); onnxruntime removes them before it runs anything
    ops = [[n.op_type for n in graph.node if n.op_type != "Identity"] for graph in (exported, searched)]
    assert ops[0] == ops[1] and "Identity" not in [n.op_type for n in searched.node]
    assert {tuple(i.dims) for i in exported.initializer} == {tuple(i.dims) for i in searched.initializer}
    # the report and the card record the exported file's latency, with how it was taken
    latency = report.latency
    assert latency is not None and latency["median_ms"] > 0 and latency["spread_ms"] >= 0
    assert (latency["repeats"], latency["warmup"], latency["runtime"], latency["precision"]) == (
        8, 2, "onnxruntime", "fp32")
    assert json.loads(card_path(tmp_path / "m.onnx").read_text())["latency"] == latency
    assert read_card(tmp_path / "m.onnx").threshold is None  # the card still reads, and its hash still matches
    # the file (by path or as bytes) times the same way
    check_sane(onnx_latency(tmp_path / "m.onnx", FAST), FAST)
    check_sane(onnx_latency((tmp_path / "m.onnx").read_bytes(), FAST), FAST)


def test_an_int8_target_times_the_int8_file_and_needs_it(tmp_path):
    save_face_model(tmp_path / "m.pt")
    target = TargetConfig(repeats=5, warmup=1, precision="int8")
    with pytest.raises(ExportError, match="precision int8 .*--quantize int8"):
        export_onnx(tmp_path / "m.pt", tmp_path / "m.onnx", target=target)
    assert not (tmp_path / "m.onnx").exists()  # refused before anything was written
    report = export_onnx(tmp_path / "m.pt", tmp_path / "m.onnx", quantize="int8", target=target)
    assert report.latency["precision"] == "int8"
    assert json.loads(card_path(tmp_path / "m.int8.onnx").read_text())["latency"] == report.latency
    assert json.loads(card_path(tmp_path / "m.onnx").read_text())["latency"] is None
    comparison = report.quantized["latency_ms_batch32"]
    assert comparison["int8"]["batch"] == 32 and comparison["int8"]["repeats"] == 5
    assert comparison["float32"]["precision"] == "fp32" and comparison["float32"]["median_ms"] > 0


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's notice about its other exporter
def test_what_is_not_a_face_model_is_refused_clearly(tmp_path):
    with pytest.raises(LatencyError, match="not a loadable ONNX model"):
        onnx_latency(b"not an onnx model", FAST)
    with pytest.raises(LatencyError, match="missing.onnx: no such ONNX file"):
        onnx_latency(tmp_path / "missing.onnx", FAST)
    buffer = io.BytesIO()
    torch.onnx.export(torch.nn.Conv2d(1, 2, 3), (torch.zeros(1, 1, 32, 32),), buffer, input_names=["x"],
                      dynamo=False)
    with pytest.raises(LatencyError, match=r"input 'x' has shape \[1, 1, 32, 32\].*\[N, 3, 112, 112\]"):
        onnx_latency(buffer.getvalue(), FAST)


def test_missing_onnxruntime_and_a_failed_export_name_the_architecture(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr("facenas.export.latency.export_graph", broken)
    with pytest.raises(LatencyError, match=f"architecture {TINY.short()}: could not be exported.*unsupported"):
        arch_latency(TINY, FAST)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(FacenasError, match=f"architecture {TINY.short()}: .*needs onnxruntime"):
        arch_latency(TINY, FAST)


def test_cli_export_times_the_file_with_the_given_settings(tmp_path):
    save_face_model(tmp_path / "m.pt")
    runner = CliRunner()
    args = ["export", "--checkpoint", str(tmp_path / "m.pt"), "--out", str(tmp_path / "m.onnx")]
    result = runner.invoke(app, [*args, "--latency-batch", "2", "--latency-repeats", "5", "--latency-threads", "1"])
    assert result.exit_code == 0, result.output
    latency = json.loads(result.stdout)["latency"]
    assert (latency["batch"], latency["repeats"], latency["threads"]) == (2, 5, 1)
    assert latency["median_ms"] > 0 and "spread_ms" in latency
    result = runner.invoke(app, [*args, "--no-latency"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["latency"] is None
    assert json.loads(card_path(tmp_path / "m.onnx").read_text())["latency"] is None
