"""ConvNet practice: edge filters as cross-correlation, a filter learned back to Sobel, the
layer-by-layer summary against the conv arithmetic and torch's count, the depthwise separable
cost ratio and GoogLeNet's bottleneck against XLA's cost analysis."""

import functools

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import signal

from data.images import grey_photo, sample_photos
from experiments import conv_arithmetic, edges
from models import convnets
from models.conv import (EDGE_FILTERS, HORIZONTAL_EDGE, SCHARR, SOBEL, VERTICAL_EDGE, avg_pool,
                         conv_macs, conv_output_size, cross_correlate,
                         depthwise_separable_cost_ratio, depthwise_separable_macs, edge_filter)


# ---------------------------------------------------------------------------------- edge filters
def test_cross_correlate_slides_the_filter_unflipped():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(9, 11)).astype(np.float32)
    k = rng.normal(size=(2, 3, 3)).astype(np.float32)
    images = jnp.asarray(x)[None, :, :, None]
    y = np.asarray(cross_correlate(images, k))
    assert y.shape == (1, 7, 9, 2)
    for i in range(2):
        np.testing.assert_allclose(y[0, :, :, i], signal.correlate2d(x, k[i], "valid"),
                                   rtol=1e-5, atol=1e-5)
        # A true convolution flips the filter: different unless the filter is symmetric.
        assert not np.allclose(y[0, :, :, i], signal.convolve2d(x, k[i], "valid"), atol=1e-3)
    same = np.asarray(cross_correlate(images, k[:1], padding="same"))[0, :, :, 0]
    np.testing.assert_allclose(same, signal.correlate2d(x, k[0], "same"), rtol=1e-5, atol=1e-5)
    strided = np.asarray(cross_correlate(images, k[:1], s=2))[0, :, :, 0]
    assert strided.shape == (conv_output_size(9, 3, 0, 2), conv_output_size(11, 3, 0, 2))
    np.testing.assert_allclose(strided, signal.correlate2d(x, k[0], "valid")[::2, ::2],
                               rtol=1e-5, atol=1e-5)


def test_edge_filters_are_the_literatures():
    central_difference = np.array([1, 0, -1])
    np.testing.assert_array_equal(VERTICAL_EDGE, np.outer([1, 1, 1], central_difference))
    np.testing.assert_array_equal(SOBEL, np.outer([1, 2, 1], central_difference))
    np.testing.assert_array_equal(SCHARR, np.outer([3, 10, 3], central_difference))
    np.testing.assert_array_equal(HORIZONTAL_EDGE, VERTICAL_EDGE.T)
    np.testing.assert_array_equal(edge_filter("sobel_horizontal"), SOBEL.T)
    for k in EDGE_FILTERS.values():
        assert k.sum() == 0   # no response on a flat region
    with pytest.raises(ValueError, match="unknown edge filter 'prewitt'"):
        edge_filter("prewitt")


def test_vertical_filters_see_a_vertical_edge_and_not_a_horizontal_one():
    step = np.zeros((6, 6), np.float32)
    step[:, :3] = 1.0                                          # bright left, dark right
    images = jnp.asarray(step)[None, :, :, None]
    names = ("vertical", "horizontal", "sobel", "scharr")
    y = np.asarray(cross_correlate(images, np.stack([EDGE_FILTERS[n] for n in names])))[0]
    # Across the edge each vertical filter sums its positive column: 3, 1+2+1, 3+10+3.
    np.testing.assert_array_equal(y[:, :, 0], np.tile([0, 3, 3, 0], (4, 1)))
    np.testing.assert_array_equal(y[:, :, 1], 0)
    np.testing.assert_array_equal(y[:, 1:3, 2], 4)
    np.testing.assert_array_equal(y[:, 1:3, 3], 16)
    # Dark to bright gives the opposite sign.
    flipped = np.asarray(cross_correlate(1.0 - images, SOBEL[None]))[0, :, :, 0]
    np.testing.assert_array_equal(flipped[:, 1:3], -4)


def test_cross_correlate_names_bad_shapes():
    with pytest.raises(ValueError, match=r"one-channel images \[batch, H, W, 1\]"):
        cross_correlate(jnp.zeros((1, 8, 8, 3)), SOBEL[None])
    with pytest.raises(ValueError, match=r"square filters \[k, f, f\]"):
        cross_correlate(jnp.zeros((1, 8, 8, 1)), SOBEL)


def test_a_filter_trained_on_the_sobel_response_becomes_sobel():
    photo = edges.as_images(grey_photo("camera"))
    images = edges.standardize(avg_pool(photo, 8))                   # 64 x 64
    learned, losses = edges.learn_filter(images, SOBEL, steps=1500, lr=0.3, seed=0)
    assert losses[-1] < 1e-6 * losses[0]
    np.testing.assert_allclose(learned, SOBEL, atol=1e-3)


# ------------------------------------------------------------------------------------ summaries
@functools.cache
def summary(name: str, image_size: int | None = None) -> convnets.Summary:
    return convnets.summary(name, image_size)


@pytest.mark.parametrize("name, conv_bias", [("lenet5", True), ("alexnet_paper", True),
                                             ("resnet18", False), ("mobilenet_v2", False)])
def test_every_layer_follows_the_conv_arithmetic(name, conv_bias):
    s = summary(name)
    assert [l.kind for l in s.layers].count("batchnorm") == (0 if conv_bias else
                                                            sum(l.f is not None for l in s.layers))
    for l in s.layers:
        if l.f is not None:      # (f * f * n_c_prev / groups + bias) * n_c; n_out^2 per weight
            (n_h, n_w, c_in), (o_h, o_w, c_out) = l.input_shape, l.output_shape
            assert (o_h, o_w) == (conv_output_size(n_h, l.f, l.p, l.s),
                                  conv_output_size(n_w, l.f, l.p, l.s)), l.name
            weights = l.f * l.f * (c_in // l.groups) * c_out
            assert l.params == weights + (c_out if conv_bias else 0), l.name
            assert l.macs == o_h * o_w * weights, l.name
        elif l.kind == "dense":
            assert l.params == (l.input_shape[-1] + 1) * l.output_shape[-1]
            assert l.macs == l.input_shape[-1] * l.output_shape[-1]
        else:
            assert (l.params, l.macs) == (2 * l.output_shape[-1], 0)   # scale and shift


def test_summary_rows_match_the_papers_layers():
    lenet = {l.name: l for l in summary("lenet5").layers}
    # LeNet-5 (section II.B): C1 156 parameters, 122,304 connections (with the biases); C5
    # 48,120 of both; F6 10,164 parameters. Our C3 connects all six S2 maps (2,416, not 1,516).
    assert (lenet["C1"].output_shape, lenet["C1"].params) == ((28, 28, 6), 156)
    assert lenet["C1"].macs + 28 * 28 * 6 == 122_304
    assert lenet["C5"].params == lenet["C5"].macs + 120 == 48_120
    assert lenet["F6"].params == 10_164
    alexnet = summary("alexnet_paper").layers[0]       # 227 -> 55: (227 - 11) / 4 + 1
    assert (alexnet.output_shape, alexnet.params) == ((55, 55, 96), (11 * 11 * 3 + 1) * 96)
    vgg = summary("vgg16", 32).layers[0]
    assert (vgg.name, vgg.output_shape, vgg.params) == ("conv1_1", (32, 32, 64), 1_792)
    conv1 = summary("resnet18").layers[0]
    assert (conv1.output_shape, conv1.params, conv1.macs) == ((112, 112, 64), 9_408,
                                                              118_013_952)


@pytest.mark.parametrize("name", ["lenet5", "alexnet_paper", "resnet18", "mobilenet_v2",
                                  "googlenet"])
def test_summary_totals_are_count_params(name):
    s = summary(name)
    if name == "googlenet":   # the auxiliary classifiers do not run at inference
        assert (s.params, s.layer_params) == (13_004_888, 6_624_904)   # torchvision's counts
    else:
        assert s.layer_params == s.params == convnets.count_params(name)
    assert s.output_shape == (convnets.REGISTRY[name].num_classes,)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "googlenet"])
def test_summary_multiply_adds_equal_torchs_count(name):
    pytest.importorskip("torchvision")
    assert summary(name).macs == conv_arithmetic.torch_macs(name, 224)


def test_format_summary_groups_and_totals():
    s = summary("resnet18")
    grouped = convnets.group_layers(s.layers, 1)
    assert [g.name for g in grouped][:3] == ["conv1", "bn1", "conv2_1"]
    assert sum(g.macs for g in grouped) == s.macs == 1_814_073_344
    assert sum(g.params for g in grouped) == s.params
    text = convnets.format_summary(s, depth=1)
    row = next(line.split() for line in text.splitlines() if line.startswith("conv3_1 "))
    assert row == ["conv3_1", "3", "conv,", "3", "bn", "56x56x64", "28x28x128", "230,144",
                   "179,830,784"]
    assert text.splitlines()[-1] == ("resnet18: input 224x224x3 -> output 1000; 11,689,512 "
                                     "parameters; 1,814,073,344 multiply-adds (1.814 G) per image")
    with pytest.raises(ValueError, match="unknown model 'resnet19'"):
        convnets.summary("resnet19")


# --------------------------------------------------------------------------------- cost counts
@pytest.mark.parametrize("f, n_c", [(3, 16), (5, 4)])
def test_depthwise_separable_ratio_is_measured_by_xla(f, n_c):
    r = conv_arithmetic.depthwise_ratio(f, n_c, n_c_prev=8, n=6)
    assert r["xla_conv"] == r["conv"] == conv_macs(6, f, 8, n_c)
    assert r["xla_separable"] == r["separable"] == depthwise_separable_macs(6, f, 8, n_c)
    assert r["measured"] == pytest.approx(1 / n_c + 1 / f ** 2, rel=1e-12)
    assert depthwise_separable_cost_ratio(f, n_c) == r["formula"]
    with pytest.raises(ValueError, match="groups = 3 must divide"):
        conv_macs(6, f, 8, n_c, groups=3)


def test_googlenet_bottleneck_counts():
    r = conv_arithmetic.googlenet_bottleneck()
    direct, bottleneck = r["direct"], r["bottleneck"]
    assert direct["macs"] == 28 * 28 * 32 * 5 * 5 * 192 == 120_422_400            # "120M"
    assert [m for _, _, m in bottleneck["layers"]] == [2_408_448, 10_035_200]
    assert bottleneck["macs"] == 12_443_648                                         # "12.4M"
    assert direct["xla_valid"] == direct["macs"]
    assert bottleneck["xla_valid"] == bottleneck["macs"]
    # With "same" padding XLA counts only taps on real pixels: per axis 28 * 5 minus the
    # 2 + 1 taps that overhang each border, 134.
    assert direct["xla_same"] == 134 ** 2 * 192 * 32
    assert bottleneck["xla_same"] == 28 * 28 * 192 * 16 + 134 ** 2 * 16 * 32
    assert (direct["params"], bottleneck["params"]) == ((5 * 5 * 192 + 1) * 32,
                                                        (192 + 1) * 16 + (5 * 5 * 16 + 1) * 32)
    assert direct["output"] == bottleneck["output"] == (28, 28, 32)


def test_grey_photo_reads_the_bundled_photographs():
    camera = grey_photo("camera")
    assert (camera.shape, camera.dtype) == ((512, 512), np.uint8)
    astronaut = grey_photo("astronaut").astype(np.float64)
    rgb = sample_photos()["astronaut"].astype(np.float64)
    luma = rgb @ np.array([0.299, 0.587, 0.114])          # ITU-R 601
    assert np.abs(astronaut - luma).max() <= 1.0
    with pytest.raises(ValueError, match="unknown photograph 'lena'"):
        grey_photo("lena")
