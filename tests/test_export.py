"""ONNX export in Brevitas' QCDQ format, checked with onnxruntime against PyTorch (the integer
kernel and packed formats: tests/test_deploy.py)."""

from __future__ import annotations

import os
import re
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm
import torch
import torchvision

from qsgt_plugin import convert
from qsgt_plugin.cli import main
from qsgt_plugin.quant.export import ExportError, export_onnx, export_ready


def run_onnx(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x.numpy()})[0]


@pytest.mark.parametrize(
    ("method", "weight_quant"),
    [("pact", "dorefa"), ("pact_lsq", "int_per_channel"), ("pact", "int_per_channel")],
)
def test_exported_model_matches_pytorch_fake_quant(tmp_path, method, weight_quant):
    model = convert(
        timm.create_model("resnet20", in_chans=1),
        bits=4,
        method=method,
        weight_quant=weight_quant,
        alpha_init=3.0,
    ).eval()
    x = torch.randn(32, 1, 28, 28)
    path = export_onnx(model, tmp_path / "m.onnx", x[:1], format="qcdq")
    with torch.no_grad():
        expected = model(x).numpy()
    got = run_onnx(path, x)  # a batch of 32 through a graph traced with batch 1
    np.testing.assert_array_equal(got.argmax(1), expected.argmax(1))
    np.testing.assert_allclose(got, expected, atol=1e-3, rtol=1e-4)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Clip", "Conv"} <= ops


def test_export_copy_is_bit_identical_and_leaves_the_model_alone():
    model = convert(timm.create_model("resnet20"), bits=3).eval()
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        assert torch.equal(export_ready(model)(x), before)
        assert torch.equal(model(x), before)


def test_activations_shared_by_several_call_sites_export(tmp_path):
    model = convert(
        torchvision.models.resnet18(num_classes=5), bits=4, example_inputs=torch.randn(1, 3, 64, 64)
    ).eval()
    x = torch.randn(4, 3, 64, 64)
    path = export_onnx(model, tmp_path / "r18.onnx", x[:1], format="qcdq")
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_array_equal(run_onnx(path, x).argmax(1), expected.argmax(1))


def test_8_bit_dorefa_weights_cannot_be_exported(tmp_path):
    model = convert(timm.create_model("resnet20"), bits=8).eval()
    with pytest.raises(ExportError, match="8-bit DoReFa weights need 9-bit integers"):
        export_onnx(model, tmp_path / "m.onnx", torch.randn(1, 3, 32, 32), format="qcdq")


def test_missing_export_extra_is_named(tmp_path, monkeypatch):
    model = convert(timm.create_model("resnet20"), bits=4).eval()
    for module, format in (("onnxoptimizer", "qcdq"), ("onnxruntime", "qdq"), ("onnx", "packed")):
        with monkeypatch.context() as patch:
            patch.setitem(sys.modules, module, None)
            with pytest.raises(ExportError, match=r"pip install 'qsgt-plugin\[export\]'"):
                export_onnx(model, tmp_path / "m.onnx", torch.randn(1, 3, 32, 32), format=format)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("QSGT_DATA"), reason="QSGT_DATA not set")
def test_cli_export_writes_onnx_and_prints_sizes(tmp_path, capsys):
    run = tmp_path / "run"
    recipe = os.path.join(
        os.path.dirname(__file__), "..", "qsgt_plugin", "recipes", "quickstart.yaml"
    )
    assert (
        main(
            [
                "train",
                recipe,
                "--set",
                "train.max_steps=2",
                "--set",
                "sgt.enabled=false",
                "--set",
                "data.test_subset=50",
                "--set",
                f"output.dir={run}",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["export", str(run)]) == 0  # the default format: qdq
    out = capsys.readouterr().out
    assert (run / "model.onnx").stat().st_size > 10_000
    sizes = re.search(r"quantized bit widths: ([\d,]+) bytes; as fp32: ([\d,]+) bytes", out)
    quantized, fp32 = (int(s.replace(",", "")) for s in sizes.groups())
    assert fp32 > 7 * quantized
    assert re.search(r"onnxruntime runs (\d+) of \1 convolutions", out) is None  # first is float
    assert "integer kernels" in out


def test_a_relu6_site_caps_at_6_in_the_exported_graph_when_alpha_is_larger(tmp_path):
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU6(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4),
    )  # fmt: skip
    model = convert(net, bits=8, weight_quant="int_per_channel", alpha_init=10.0).eval()
    model[1].bias.data.fill_(5.0)  # most activations above 6
    x = torch.randn(8, 3, 16, 16)
    path = export_onnx(model, tmp_path / "m.onnx", x[:1], format="qcdq")
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(run_onnx(path, x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "build",
    [
        lambda: timm.create_model("mobilenetv2_050", num_classes=10),
        lambda: torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.5),
    ],
    ids=["timm-mobilenetv2", "torchvision-mobilenet_v2"],
)
def test_mobilenet_v2_exports_its_relu6_sites(tmp_path, build):
    torch.manual_seed(0)
    x = torch.randn(32, 3, 64, 64)
    model = convert(build(), bits=8, weight_quant="int_per_channel", example_inputs=x[:1]).eval()
    with torch.no_grad():  # activations well above 6, below the default alpha of 10
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.bias.fill_(4.0)
    path = export_onnx(model, tmp_path / "m.onnx", x[:1], format="qcdq")
    with torch.no_grad():
        expected = model(x).numpy()
    got = run_onnx(path, x)
    np.testing.assert_array_equal(got.argmax(1), expected.argmax(1))
    # onnxruntime's convolutions round differently in the last bits, which moves a few values
    # across an 8-bit level; with the ReLU6 cap lost the typical error is a quarter of the scale.
    scale = np.abs(expected).mean()
    assert np.median(np.abs(got - expected)) < 1e-4 * scale
    assert np.abs(got - expected).max() < 0.01 * np.abs(expected).max()


def test_qdq_without_calibration_inputs_says_how_many_quantizers_it_calibrated(tmp_path):
    """A MobileNetV2's residual stream has no PACT quantizer: the qdq graph calibrates 8-bit
    ones, on the example inputs when no calibration inputs are given. That is said, with the
    count; with real calibration inputs, or for the packed format, nothing is."""
    import warnings

    from qsgt_plugin.quant.export import ExportWarning

    torch.manual_seed(0)
    x = torch.rand(8, 3, 32, 32)
    build = lambda: torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.5)  # noqa: E731
    model = convert(build(), bits=4, weight_quant="int_per_channel", example_inputs=x[:1]).eval()
    with pytest.warns(
        ExportWarning,
        match=r"needs (\d+) 8-bit quantizer\(s\) .* calibrated on "
        r"example_inputs alone \(8 input\(s\)\)",
    ) as caught:
        export_onnx(model, tmp_path / "a.onnx", x)
    count = int(re.search(r"needs (\d+)", str(caught[0].message)).group(1))
    assert count > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExportWarning)
        export_onnx(model, tmp_path / "b.onnx", x, calibration_inputs=torch.rand(32, 3, 32, 32))
        export_onnx(model, tmp_path / "c.onnx", x, format="packed")
