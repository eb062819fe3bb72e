"""Hand-designed baselines: arcface_torch's sizes, width matching, and the same train -> eval -> export path."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from facenas.cli.main import app
from facenas.config import parse_config
from facenas.errors import ArchError, ConfigError
from facenas.models.backbones import (
    BACKBONES,
    NATIVE_HEADS,
    BackboneSpec,
    backbone_param_count,
    build_backbone,
    count_macs_module,
    match_width,
)
from facenas.models.chain import module_param_count
from facenas.models.checkpoint import describe_face_model, load_face_model

runner = CliRunner()


# -- arcface_torch's parameter counts, from its definitions ------------------------------------------------------
# recognition/arcface_torch/backbones/mobilefacenet.py (get_mbf: scale 2, blocks (1, 4, 6, 2)) and iresnet.py,
# counted layer by layer here without facenas's code: convolutions without bias, BN = 2 per channel, PReLU = 1.

def _mbf_reference(emb: int = 512, side: int = 7) -> int:
    def conv_block(c_in: int, c_out: int, k: int, groups: int = 1) -> int:  # ConvBlock: conv -> BN -> PReLU
        return c_in // groups * c_out * k * k + 3 * c_out

    def depthwise(c_in: int, c_out: int, g: int) -> int:  # DepthWise: 1x1 ConvBlock, dw 3x3 ConvBlock, LinearBlock
        return conv_block(c_in, g, 1) + conv_block(g, g, 3, groups=g) + g * c_out + 2 * c_out

    n = conv_block(3, 128, 3) + conv_block(128, 128, 3, groups=64)
    n += depthwise(128, 128, 128) + 4 * depthwise(128, 128, 128)
    n += depthwise(128, 256, 256) + 6 * depthwise(256, 256, 256)
    n += depthwise(256, 256, 512) + 2 * depthwise(256, 256, 256)
    n += conv_block(256, 512, 1)
    return n + 512 * side * side + 2 * 512 + 512 * emb + 2 * emb  # GDC: dw 7x7 + BN, Linear (no bias), BN1d


def _iresnet_reference(layers: tuple[int, ...], emb: int = 512, side: int = 7) -> int:
    def block(c_in: int, c_out: int, project: bool) -> int:  # IBasicBlock: bn1, conv1, bn2, prelu, conv2, bn3
        return 2 * c_in + 9 * c_in * c_out + 3 * c_out + 9 * c_out * c_out + 2 * c_out + (
            c_in * c_out + 2 * c_out if project else 0)

    n, c = 3 * 64 * 9 + 3 * 64, 64  # conv1, bn1, prelu
    for planes, blocks in zip((64, 128, 256, 512), layers):
        n += block(c, planes, True) + (blocks - 1) * block(planes, planes, False)
        c = planes
    return n + 2 * 512 + 512 * side * side * emb + emb + 2 * emb  # bn2, fc (with bias), features BN1d


def _meta(spec: BackboneSpec) -> torch.nn.Module:
    with torch.device("meta"):
        return build_backbone(spec)


@pytest.mark.parametrize("name, reference, known, macs_g", [
    # known: the usual figures, IR-50 ~43.6 M; MACs: arcface_torch's README names "mobilefacenet-0.45G" and
    # r18 2.6 / r50 6.3 (G) in its FLOPs column (ptflops, which reports multiply-accumulates)
    ("mobilefacenet", _mbf_reference(), 2_059_520, 0.45),
    ("iresnet18", _iresnet_reference((2, 2, 2, 2)), 24_025_600, 2.6),
    ("iresnet50", _iresnet_reference((3, 4, 14, 3)), 43_590_848, 6.3),
])
def test_width_one_at_112_has_arcface_torchs_parameter_count(name, reference, known, macs_g):
    model = _meta(BackboneSpec(name))
    total = sum(p.numel() for p in model.parameters())
    assert total == reference == known
    # iResNet's embedding BN keeps its scale frozen at 1, as in arcface_torch: 512 parameters not trained
    assert module_param_count(model) == total - (512 if name.startswith("iresnet") else 0)
    assert count_macs_module(model, 112, 3) / 1e9 == pytest.approx(macs_g, rel=0.04)


@pytest.mark.parametrize("name", BACKBONES)
def test_width_scales_the_body_quadratically(name):
    def body(width: float) -> int:
        return module_param_count(_meta(BackboneSpec(name, width)).body)

    assert 3.7 < body(1.0) / body(0.5) < 4.3 and 3.7 < body(2.0) / body(1.0) < 4.3
    # the whole network grows less: the last Linear is linear in the width for a fixed embedding size
    whole = [backbone_param_count(BackboneSpec(name, w)) for w in (0.5, 1.0, 2.0)]
    assert 2.5 < whole[1] / whole[0] < 4.3 and 2.5 < whole[2] / whole[1] < 4.3


@pytest.mark.parametrize("name, target", [("mobilefacenet", 300_000), ("mobilefacenet", 1_200_000),
                                          ("iresnet18", 1_000_000)])
def test_match_width_hits_a_parameter_target(name, target):
    width = match_width(name, target, input_size=56, stem_stride=1, embedding_dim=128)
    spec = BackboneSpec(name, width, input_size=56, stem_stride=1, embedding_dim=128)
    assert abs(backbone_param_count(spec) - target) / target < 0.03
    with pytest.raises(ArchError, match="below that"):
        match_width(name, 1_000)


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("channels", [1, 3])
def test_embeddings_for_grey_and_colour_at_112_and_the_half_resolution_proxy(name, channels):
    torch.manual_seed(0)
    full = BackboneSpec(name, 0.125, channels, 112, 24, stem_stride=2)
    half = BackboneSpec(name, 0.125, channels, 56, 24, stem_stride=1)
    for spec in (full, half):
        model = build_backbone(spec).eval()
        x = torch.randn(3, channels, spec.input_size, spec.input_size)
        assert model(x).shape == (3, 24)
        assert model.forward_features(x).shape[-1] == 7  # the body ends on the same 7x7 map either way
    # the same body and head: the stem only changes its stride, so a 56x56 result retargets to 112x112
    assert {k: v.shape for k, v in build_backbone(full).state_dict().items()} == \
        {k: v.shape for k, v in build_backbone(half).state_dict().items()}


def test_specs_round_trip_and_bad_ones_are_named():
    spec = BackboneSpec("iresnet18", 0.5, 1, 56, 128, stem_stride=1)
    assert spec.embedding_head == NATIVE_HEADS["iresnet18"] == "fc"
    assert BackboneSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert BackboneSpec("iresnet18", embedding_head="pool").embedding_head == "pool"
    with pytest.raises(ArchError, match="unknown backbone 'resnet9'; valid: mobilefacenet, iresnet18, iresnet50"):
        BackboneSpec("resnet9")
    with pytest.raises(ArchError, match="width multiplier .* applies to"):
        BackboneSpec("timm:resnet10t", 0.5)
    with pytest.raises(ArchError, match="embedding_head of mobilefacenet must be one of gdc, pool"):
        BackboneSpec("mobilefacenet", embedding_head="fc")
    with pytest.raises(ArchError, match="unknown backbone keys"):
        BackboneSpec.from_dict({"name": "mobilefacenet", "depth": 3})
    with pytest.raises(ArchError, match="timm does not know a model 'no_such_net_xyz'"):
        build_backbone(BackboneSpec("timm:no_such_net_xyz"))


def test_the_config_validates_backbones():
    with pytest.raises(ConfigError, match="model.backbone 'resnet9' is unknown; valid: mobilefacenet"):
        parse_config({"task": "faces", "model": {"backbone": "resnet9"}})
    with pytest.raises(ConfigError, match="backbone_width .* and model.backbone_params .* both set"):
        parse_config({"task": "faces", "model": {"backbone": "iresnet18", "backbone_width": 0.5,
                                                 "backbone_params": 10_000}})
    with pytest.raises(ConfigError, match="model.backbone is not read by a classification run"):
        parse_config({"model": {"backbone": "iresnet18"}})


def test_a_timm_model_gets_facenas_embedding_head_and_exports(tmp_path):
    from facenas.export.onnx import export_onnx

    spec = BackboneSpec("timm:mobilenetv3_small_050", in_channels=1, input_size=56, embedding_dim=32)
    torch.manual_seed(0)
    model = build_backbone(spec)
    x = torch.randn(4, 1, 56, 56)
    out = model(x)
    assert out.shape == (4, 32)
    out.square().sum().backward()
    assert model.head.fc.weight.grad is not None and type(model.head).__name__ == "EmbeddingHead"
    assert count_macs_module(model, 56, 1) > 0 and model.training
    torch.save({"format": "facenas.face-model/1", "backbone": spec.to_dict(), "model": model.state_dict()},
               tmp_path / "t.pt")
    report = export_onnx(tmp_path / "t.pt", tmp_path / "t.onnx")
    assert report.verification.insightface_class == "ArcFaceONNX"
    card = report.card_data
    assert card["arch"]["name"] == "timm:mobilenetv3_small_050" and card["trained_channels"] == 1


# -- the same trainer, evaluator and export ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained_backbone(tmp_path_factory):
    """A tiny MobileFaceNet trained by `train_faces` on synthetic faces (32x32, stride-1 stem, 2 epochs)."""
    from facenas.train.face_job import train_faces

    folder = tmp_path_factory.mktemp("mbf")
    cfg = parse_config({
        "name": "mbf", "task": "faces", "seed": 0,
        "faces": {"data": {"source": "synthetic", "synthetic": {"identities": 30, "images_per_identity": 5, "seed": 3},
                           "size": 32, "heldout_identities": 10, "heldout_pairs_per_fold": 4},
                  "train": {"epochs": 2, "batch_size": 32, "lr": 0.1, "margin": {"loss": "arcface", "s": 16.0}}},
        "model": {"stem_stride": 1, "embedding_dim": 16, "backbone": "mobilefacenet", "backbone_width": 0.25},
        "run": {"out": str(folder)},
    })
    return train_faces(None, cfg), folder


def test_train_faces_trains_a_backbone_and_model_pt_rebuilds_it(trained_backbone):
    report, folder = trained_backbone
    assert report["backbone"] == "mobilefacenet" and report["epochs"] == 2
    assert report["arch"]["format"] == "facenas.backbone/1" and report["arch"]["width"] == 0.25
    model, network, preprocess = load_face_model(folder / "model.pt")
    assert network == BackboneSpec("mobilefacenet", 0.25, 3, 32, 16, stem_stride=1)
    assert report["params"] == module_param_count(model) == backbone_param_count(network)
    assert report["macs"] == count_macs_module(model, 32, 3) > 0
    info = describe_face_model(model, network)
    assert (info.in_channels, info.input_size, info.embedding_dim, info.head) == (3, 32, 16, "embedding")
    assert preprocess["size"] == 32
    _, last, _ = load_face_model(folder / "checkpoints" / "last.pt")  # the resumable checkpoint rebuilds it too
    assert last == network


def test_eval_and_export_take_a_backbones_model_pt(trained_backbone, calibration_pairs, tmp_path):
    from facenas.data.faces.pairs import write_bin
    from facenas.export.card import read_card
    from facenas.export.onnx import export_onnx

    _, folder = trained_backbone
    write_bin(tmp_path / "calib.bin", calibration_pairs.images, calibration_pairs.issame)
    result = runner.invoke(app, ["eval", "--model", str(folder / "model.pt"), "--bin", str(tmp_path / "calib.bin"),
                                 "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    evaluated = json.loads((tmp_path / "r.json").read_text())
    assert evaluated["model"]["arch"].startswith("mobilefacenet x0.25") and evaluated["model"]["input_size"] == 32
    assert evaluated["sets"]["calib"]["folds"] == 10

    report = export_onnx(folder / "model.pt", tmp_path / "mbf.onnx", calibration=calibration_pairs,
                         calibration_name="calib")
    v = report.verification
    assert min(v.ort_vs_torch_min_cosine.values()) > 0.99999
    assert v.insightface_class == "ArcFaceONNX" and v.insightface_min_cosine > 0.99999
    card = read_card(tmp_path / "mbf.onnx")
    assert card.arch["name"] == "mobilefacenet" and card.arch_short.startswith("mobilefacenet x0.25")
    assert card.params == evaluated["model"]["params"] and card.macs == evaluated["model"]["macs"]
    assert (card.embedding_size, card.trained_size, card.trained_channels) == (16, 32, 3)
    assert card.threshold is not None


def test_cli_train_takes_a_backbone_instead_of_an_architecture(tmp_path, tiny_face_config_data):
    data = {**tiny_face_config_data, "faces": {**tiny_face_config_data["faces"],
                                               "train": {**tiny_face_config_data["faces"]["train"], "epochs": 1}}}
    config = tmp_path / "faces.yaml"
    config.write_text(yaml.safe_dump(data))
    result = runner.invoke(app, ["train", "--backbone", "mobilefacenet", "--backbone-width", "0.25", "-c", str(config),
                                 "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output[result.output.index("{"):])
    assert printed["arch_short"].startswith("mobilefacenet x0.25") and printed["params"] > 0
    assert (tmp_path / "run" / "model.pt").exists()

    result = runner.invoke(app, ["train", "-c", str(config), "--out", str(tmp_path / "none")])
    assert result.exit_code == 2 and "give --arch FILE" in result.output and "--backbone NAME" in result.output
    arch = tmp_path / "a.json"
    arch.write_text("{}")
    result = runner.invoke(app, ["train", "--arch", str(arch), "--backbone", "iresnet18", "-c", str(config),
                                 "--out", str(tmp_path / "both")])
    assert result.exit_code == 2 and "--arch and a backbone (model.backbone: iresnet18) both given" in result.output
    result = runner.invoke(app, ["train", "--backbone", "iresnet18", "--backbone-width", "0.5", "--backbone-params",
                                 "100000", "-c", str(config), "--out", str(tmp_path / "two")])
    assert result.exit_code == 2 and "both set" in result.output
    result = runner.invoke(app, ["train", "--backbone", "vgg", "-c", str(config), "--out", str(tmp_path / "bad")])
    assert result.exit_code == 2 and "valid: mobilefacenet, iresnet18, iresnet50" in result.output
    result = runner.invoke(app, ["train", "--backbone", "timm:no_such_net_xyz", "-c", str(config), "--out",
                                 str(tmp_path / "timm")])
    assert result.exit_code == 2 and "timm does not know a model 'no_such_net_xyz'" in result.output
    assert not any((tmp_path / d).exists() for d in ("none", "both", "two", "bad", "timm"))
