"""The deployment formats: ``qdq`` (onnxruntime's integer kernels) and ``packed`` (weights at
their bit width), checked against PyTorch and against the optimised graph's node types."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm
import torch
import torchvision
from torch import nn

from qsgt_plugin import convert
from qsgt_plugin.quant import model_size_bytes
from qsgt_plugin.quant.export import ExportError, export_onnx
from qsgt_plugin.quant.export.packed import pack_bits
from qsgt_plugin.quant.export.qdq import QDQStats, check_integer_kernels, integer_kernel_report


def run_onnx(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x.numpy()})[0]


def resnet20(in_chans: int, bits: int, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("resnet20", in_chans=in_chans, num_classes=10)
    with torch.no_grad():  # BatchNorm statistics of a trained model, not the identity
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(-1.0, 1.5)  # some negative: their sign goes into the integers
                m.bias.uniform_(-0.2, 0.5)
    return convert(model, bits=bits, alpha_init=2.0, **kwargs).eval()


def images(in_chans: int, n: int = 64) -> torch.Tensor:
    return torch.randn(n, in_chans, 28 if in_chans == 1 else 32, 28 if in_chans == 1 else 32)


@pytest.mark.parametrize(
    ("in_chans", "bits", "weight_quant"),
    [(1, 4, "dorefa"), (3, 4, "dorefa"), (3, 2, "dorefa"), (3, 3, "int_per_channel")],
)
def test_packed_resnet20_is_the_pytorch_model_and_its_counted_size(
    tmp_path, in_chans, bits, weight_quant
):
    model = resnet20(in_chans, bits, weight_quant=weight_quant)
    x = images(in_chans)
    path = export_onnx(model, tmp_path / "m.onnx", x, format="packed")
    with torch.no_grad():
        expected = model(x).numpy()
    got = run_onnx(path, x)
    # The same arithmetic in float; an activation within float rounding of a level boundary
    # may take the neighbouring level, so compare the many, not every value.
    close = np.isclose(got, expected, atol=1e-4, rtol=1e-4).all(1)
    assert close.mean() >= 0.95
    np.testing.assert_array_equal(got.argmax(1)[close], expected.argmax(1)[close])
    counted = model_size_bytes(model)
    assert counted <= path.stat().st_size <= 1.15 * counted, (path.stat().st_size, counted)
    stored = {t.data_type for t in onnx.load(str(path)).graph.initializer}
    assert (onnx.TensorProto.UINT4 in stored) == (bits == 4)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 7, 8])
@pytest.mark.parametrize("weight_quant", ["int_per_channel", "dorefa"])
def test_every_width_decodes_to_the_pytorch_weights(tmp_path, bits, weight_quant):
    torch.manual_seed(bits)
    conv = nn.Sequential(nn.Conv2d(3, 5, 3, bias=False), nn.ReLU())
    model = convert(
        conv,
        bits=bits,
        weight_quant=weight_quant,
        first_last_bits=bits,
        first_last_weight_quant=weight_quant,
        alpha_init=4.0,
    ).eval()
    model[0].weight.data.normal_()  # every level used
    x = torch.randn(2, 3, 6, 6)
    path = export_onnx(model, tmp_path / "m.onnx", x, format="packed")
    with torch.no_grad():
        np.testing.assert_allclose(run_onnx(path, x), model(x).numpy(), atol=1e-5)


def test_pack_bits_is_little_endian_and_dense():
    u = np.array([5, 0, 7, 1, 2])
    packed = pack_bits(u, 3)
    assert packed.nbytes == 2  # 15 bits
    bits = np.unpackbits(packed, bitorder="little")[:15].reshape(5, 3)
    np.testing.assert_array_equal(bits @ (1 << np.arange(3)), u)


def fused_counts(path) -> dict[str, int]:
    ops = integer_kernel_report(path)
    return {k: ops.get(k, 0) for k in ("QLinearConv", "QLinearAdd", "Conv", "FusedConv")}


def layout_changes(path) -> int:
    """Transposes in the graph onnxruntime runs on this CPU (its channels-last integer kernels
    included): one into channels-last after the float first layer, one back before pooling."""
    return integer_kernel_report(path, level="all").get("Transpose", 0)


@pytest.mark.parametrize(("in_chans", "bits"), [(1, 4), (3, 4), (3, 2)])
def test_qdq_resnet20_runs_on_integer_kernels_with_the_pytorch_predictions(
    tmp_path, in_chans, bits
):
    model = resnet20(in_chans, bits)
    x = images(in_chans, 256)
    path = export_onnx(model, tmp_path / "m.onnx", x[:8], calibration_inputs=x)
    # every convolution but the first (its input is the image) and all nine residual sums
    assert fused_counts(path) == {"QLinearConv": 18, "QLinearAdd": 9, "Conv": 1, "FusedConv": 0}
    assert layout_changes(path) == 2  # not a pair around each of the nine sums
    with torch.no_grad():
        expected = model(x).numpy()
    got = run_onnx(path, x)
    # the residual branch is re-quantized to 8 bits before the integer sum: a few activations
    # move by one level; the predictions stay
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.97
    assert np.median(np.abs(got - expected)) < 0.25 * np.abs(expected).std()


def test_qdq_without_residual_sums_is_exact(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, groups=32), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )  # fmt: skip
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(-1, 1)
    model = convert(net, bits=4, alpha_init=1.5).eval()
    x = torch.randn(128, 3, 16, 16)
    path = export_onnx(model, tmp_path / "m.onnx", x)
    assert fused_counts(path)["QLinearConv"] == 2  # the first convolution reads the image
    with torch.no_grad():
        expected = model(x).numpy()
    got = run_onnx(path, x)
    # nothing re-quantized: only the runtime's int32 bias and its float rounding differ from
    # PyTorch, which moves an activation next to a level boundary now and then
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.98
    assert np.median(np.abs(got - expected)) < 0.01 * expected.std()


@pytest.mark.parametrize(
    "build",
    [
        lambda: torchvision.models.resnet18(num_classes=10),
        lambda: timm.create_model("resnet18", num_classes=10),
    ],
    ids=["torchvision-resnet18", "timm-resnet18"],
)
def test_imagenet_resnets_of_both_zoos_run_every_convolution_after_the_first_on_integers(
    tmp_path, build
):
    # Fresh, as a user converts them: timm starts each block's last BatchNorm at zero, so
    # the exporter shares those layers' (zero) weights through Identity nodes.
    torch.manual_seed(0)
    x = torch.randn(32, 3, 64, 64)
    model = convert(build(), bits=4, example_inputs=x[:1], alpha_init=2.0).eval()
    path = export_onnx(model, tmp_path / "m.onnx", x[:4], calibration_inputs=x)
    # the max pool after the first layer keeps its input's grid: no 8-bit re-quantization,
    # and onnxruntime runs it on uint8 in channels-last like the convolutions around it
    assert fused_counts(path) == {"QLinearConv": 19, "QLinearAdd": 8, "Conv": 1, "FusedConv": 0}
    ops = integer_kernel_report(path, level="all")
    assert ops.get("MaxPool", 0) == 0 and ops.get("Transpose", 0) == 2
    with torch.no_grad():
        expected = model(x).numpy()
    # A random network's logits hardly depend on the image, so top-1 says little here; the
    # 8-bit re-quantized residual branches (eight sums) leave the logits close to PyTorch's.
    assert np.median(np.abs(run_onnx(path, x) - expected)) < 0.5 * expected.std()


def test_a_node_between_quantize_and_dequantize_breaks_fusion_and_is_caught(tmp_path):
    model = resnet20(3, 4)
    x = images(3, 32)
    path = export_onnx(model, tmp_path / "m.onnx", x)
    stats = QDQStats(integer_convs=[f"conv{i}" for i in range(18)])
    assert check_integer_kernels(path, stats)["QLinearConv"] == 18
    graph = onnx.load(str(path))
    conv = [n for n in graph.graph.node if n.op_type == "Conv"][5]
    two = onnx.numpy_helper.from_array(np.array(2.0, np.float32), "two")
    graph.graph.initializer.append(two)
    graph.graph.node.append(onnx.helper.make_node("Mul", [conv.input[0], "two"], ["moved"]))
    conv.input[0] = "moved"
    broken = tmp_path / "broken.onnx"
    onnx.save(graph, str(broken))
    with pytest.raises(ExportError, match="runs 17 of the 18 convolutions"):
        check_integer_kernels(broken, stats)


@pytest.mark.parametrize(
    "build",
    [
        lambda: timm.create_model("mobilenetv2_050", num_classes=10),
        lambda: torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.5),
    ],
    ids=["timm-mobilenetv2", "torchvision-mobilenet_v2"],
)
@pytest.mark.parametrize("format", ["qdq", "packed"])
def test_relu6_models_of_both_zoos_export(tmp_path, build, format):
    torch.manual_seed(0)
    x = torch.randn(64, 3, 64, 64)
    model = convert(build(), bits=4, example_inputs=x[:1], alpha_init=4.0).eval()
    if format == "packed":
        with torch.no_grad():  # activations above 6 and beyond alpha: both caps matter
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.bias.uniform_(0.0, 8.0)
    path = export_onnx(model, tmp_path / "m.onnx", x[:4], format=format, calibration_inputs=x)
    with torch.no_grad():
        expected = model(x).numpy()
    got = run_onnx(path, x)
    if format == "packed":
        close = np.isclose(got, expected, atol=1e-3, rtol=1e-3).all(1)
        assert close.mean() >= 0.95  # the others: an activation at a level boundary
        return
    convs = fused_counts(path)
    assert convs["QLinearConv"] >= 50 and convs["Conv"] + convs["FusedConv"] == 1
    # The float residual stream and the projections (no activation, so no quantizer in the
    # PyTorch model) get calibrated 8-bit quantizers: post-training quantization's error, here
    # on a network with random weights whose logits are close together. export_onnx measures
    # and reports it (test_export_reports_its_agreement_with_pytorch).
    assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.5
    assert np.median(np.abs(got - expected)) < expected.std()


def test_8_bit_dorefa_weights_export_requantized_to_int8(tmp_path):
    model = resnet20(3, 8)
    x = images(3, 128)
    path = export_onnx(model, tmp_path / "m.onnx", x)
    assert fused_counts(path)["QLinearConv"] == 18
    with torch.no_grad():
        expected = model(x).numpy()
    assert (run_onnx(path, x).argmax(1) == expected.argmax(1)).mean() >= 0.97


def test_unknown_format_is_named(tmp_path):
    with pytest.raises(ExportError, match="unknown export format 'onnx'; allowed: qdq, packed"):
        export_onnx(resnet20(3, 4), tmp_path / "m.onnx", images(3, 1), format="onnx")


@pytest.mark.parametrize("channels_last", [True, False])
def test_agreement_gives_pytorch_the_layout_asked_and_onnxruntime_the_same_images(
    tmp_path, channels_last
):
    from qsgt_plugin.quant.export.writer import agreement

    model = resnet20(3, 4)
    x = images(3, 64)  # 3 channels: channels-last and contiguous batches differ
    path = export_onnx(model, tmp_path / "m.onnx", x[:4], format="packed")
    layouts = []
    model.register_forward_pre_hook(
        lambda module, args: layouts.append(args[0].is_contiguous() is not channels_last)
    )
    check = agreement(model, path, x, batch=32, channels_last=channels_last)
    assert layouts == [True, True]  # two batches of 32, each in the layout asked for
    assert check.images == 64 and check.same_prediction >= 0.95
    layout = torch.channels_last if channels_last else torch.contiguous_format
    with torch.no_grad():
        expected = torch.cat([model(b.contiguous(memory_format=layout)) for b in x.split(32)])
    # onnxruntime got the same images, contiguous: the same differences to the PyTorch model
    diff = np.abs(run_onnx(path, x) - expected.numpy())
    assert diff.mean() == pytest.approx(check.mean_abs_diff, rel=1e-5)
    assert diff.max() == pytest.approx(check.max_abs_diff, rel=1e-5)
