"""Exact rewrites the inference structure makes of model ops: the AdaAT warp as 2-D sampling,
large-kernel convs by FFT, and upsample + conv as phase convs at the input's resolution. Each is
the same linear map evaluated another way, so each is held to float rounding of the original."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from dinet_platform.metrics import output_psnr
from dinet_platform.models import DINet
from dinet_platform.models.blocks import AdaAT, UpBlock2d
from dinet_platform.optimize.artifact import load_artifact, save_artifact
from dinet_platform.optimize.fft_conv import FFTConv2d, is_fft_candidate
from dinet_platform.optimize.folding import ConvReLU, fold_block
from dinet_platform.optimize.modes import optimize
from dinet_platform.optimize.stand_in import settle_batchnorm, synthetic_batch, synthetic_batches
from dinet_platform.optimize.structure import FloatWarp
from dinet_platform.optimize.upsampling import SubpixelUpConvReLU, is_subpixel_candidate
from torch.utils.flop_counter import FlopCounterMode

from tests.support import MOUTH, randomize_batchnorm

pytestmark = pytest.mark.unit

# -- the AdaAT warp as 2-D sampling -----------------------------------------------------------


@pytest.mark.parametrize("feature_batch,batch,depth", [(1, 1, 256), (1, 4, 16), (3, 3, 8)])
def test_float_warp_equals_the_trilinear_adaat(feature_batch, batch, depth):
    """One avatar's features serve a batch of codes, or each frame has its own; the channel
    axis is sampled off-grid (zero beyond both ends), as the 3-D grid_sample does."""
    torch.manual_seed(0)
    adaat = AdaAT(32, depth).eval()
    features = torch.randn(feature_batch, depth, 13, 10)
    codes = 3 * torch.randn(batch, 32)  # large codes: rotations, scales and shifts off the map
    with torch.no_grad():
        expected = adaat(features.expand(batch, -1, -1, -1), codes)
        got = FloatWarp(adaat)(features, codes)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


# -- large-kernel convolutions by FFT ----------------------------------------------------------


@pytest.mark.parametrize("batch,height,width,bias", [(1, 26, 20, True), (3, 13, 11, False)])
def test_fft_conv_equals_the_direct_conv(batch, height, width, bias):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(32, 40, 11, padding=5, bias=bias).eval()
    x = torch.randn(batch, 32, height, width)
    with torch.no_grad():
        expected, got = conv(x), FFTConv2d(conv)(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4 * expected.abs().max().item())


def test_fft_conv_takes_only_the_shapes_it_is_faster_for():
    assert is_fft_candidate(torch.nn.Conv2d(128, 128, 11, padding=5))
    for conv in (torch.nn.Conv2d(128, 128, 7, padding=3),  # measured slower at 7x7
                 torch.nn.Conv2d(128, 128, 11, padding=5, stride=2),
                 torch.nn.Conv2d(128, 128, 11, padding=0),
                 torch.nn.Conv2d(8, 128, 11, padding=5)):
        assert not is_fft_candidate(conv)
    with pytest.raises(ValueError, match="not an FFT-convertible conv"):
        FFTConv2d(torch.nn.Conv2d(128, 128, 3, padding=1))


@pytest.mark.slow
def test_structure_mode_runs_the_alignment_convs_by_fft_and_exports(tmp_path: Path):
    """At width 0.25 the alignment body has 32 channels, enough for FFT: ``structure`` swaps
    its two 11x11 convs, stays within float rounding of fp32, and still exports."""
    torch.manual_seed(0)
    model = settle_batchnorm(DINet(width=0.25), synthetic_batches(MOUTH, 2, 2, seed=50))
    engine = optimize(model, "structure")
    swapped = [name for name, m in engine.backend.named_modules() if isinstance(m, FFTConv2d)]
    assert swapped == ["alignment.body.0.conv", "alignment.body.1.conv"]
    batch = synthetic_batch(MOUTH, 2, seed=7)
    with torch.no_grad():
        expected = model(batch.source, batch.references, batch.audio)
    got = engine(batch.source, batch.references, batch.audio)
    assert output_psnr(got, expected) > 80.0
    info = save_artifact(engine, tmp_path / "fft", (batch.source, batch.audio, batch.references))
    assert info.format == "export", info.fallback_reasons
    # the artifact holds direct convs (a program cannot keep the per-size spectrum cache);
    # the engine it was saved from keeps its FFT convs
    assert [n for n, m in engine.backend.named_modules() if isinstance(m, FFTConv2d)] == swapped
    loaded = load_artifact(tmp_path / "fft")
    torch.testing.assert_close(loaded(batch.source, batch.references, batch.audio), got,
                               rtol=0, atol=1e-5)


# -- upsampling at the input's resolution ------------------------------------------------------


@pytest.mark.parametrize("shape,channels_last", [((2, 8, 7, 5), False), ((3, 8, 4, 9), True)])
def test_subpixel_upsample_conv_equals_upsample_then_conv(shape, channels_last):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 6, 3, padding=1).eval()
    x = torch.randn(*shape)
    if channels_last:  # what an int8 conv hands the next block
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = ConvReLU(conv, upsample=True)(x)
        got = SubpixelUpConvReLU(conv)(x)
    assert got.shape == expected.shape == (shape[0], 6, 2 * shape[2], 2 * shape[3])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_decoder_upsamples_by_phase_convs_with_4_9ths_of_the_work():
    folded = fold_block(randomize_batchnorm(UpBlock2d(16, 16)))
    assert isinstance(folded, SubpixelUpConvReLU)
    x = torch.randn(2, 16, 12, 10)
    with FlopCounterMode(display=False) as phase_flops:
        folded(x)
    with FlopCounterMode(display=False) as direct_flops:
        ConvReLU(torch.nn.Conv2d(16, 16, 3, padding=1), upsample=True)(x)
    # 4 phases x 2x2 taps on (H+1)x(W+1) against 3x3 taps on 2H x 2W
    ratio = phase_flops.get_total_flops() / direct_flops.get_total_flops()
    assert ratio == pytest.approx(4 / 9 * (13 * 11) / (12 * 10))
    # a traced program keeps the batch dynamic (artifacts are traced at one batch size)
    with torch.no_grad():
        traced = torch.jit.trace(folded, (x,), check_trace=False)
        torch.testing.assert_close(traced(x[:1]), folded(x[:1]), rtol=0, atol=1e-6)
    assert not is_subpixel_candidate(torch.nn.Conv2d(16, 16, 5, padding=2))
    with pytest.raises(ValueError, match="not a 3x3 'same' conv"):
        SubpixelUpConvReLU(torch.nn.Conv2d(16, 16, 3, padding=0))
