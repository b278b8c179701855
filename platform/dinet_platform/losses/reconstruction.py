"""Per-frame losses: L1, mouth-box L1, MS-SSIM, VGG19 perception and LSGAN.

Images are (B, C, H, W) RGB in [0, 1], as DINet's data loader produces them.

The VGG19 perceptual loss is the one the original DINet trains with, but it needs ImageNet
weights, and nothing is downloaded here: the user supplies a torchvision ``vgg19`` state_dict
file. The MS-SSIM loss is the default because it needs no weights at all.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dinet_platform.metrics import ms_ssim


def l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over every element."""
    return F.l1_loss(pred, target)


def mouth_weighted_l1(
    pred: torch.Tensor, target: torch.Tensor, mouth_mask: torch.Tensor
) -> torch.Tensor:
    """Mean absolute error inside the mouth box only.

    ``mouth_mask`` is 1 in the box and broadcasts to the images ((1 or B, 1, H, W)). Added on
    top of the whole-crop L1 it weights the region DINet regenerates, where blurry teeth show.
    """
    weights = mouth_mask.to(pred.dtype).expand_as(pred)
    return ((pred - target).abs() * weights).sum() / weights.sum().clamp_min(1.0)


def lsgan_loss(prediction: torch.Tensor, is_real: bool) -> torch.Tensor:
    """Least-squares GAN loss: mean squared distance of discriminator outputs to 1 or 0."""
    return F.mse_loss(prediction, torch.full_like(prediction, 1.0 if is_real else 0.0))


class MSSSIMLoss(nn.Module):
    """``1 - MS-SSIM``, averaged over the batch (see :func:`dinet_platform.metrics.ms_ssim`)."""

    def __init__(self, levels: int = 3, window_size: int = 11, sigma: float = 1.5) -> None:
        super().__init__()
        self.levels = levels
        self.window_size = window_size
        self.sigma = sigma

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        score = ms_ssim(pred, target, self.levels, self.window_size, self.sigma)
        return (1.0 - score).mean()


# torchvision's VGG19 configuration "E": channel counts, "M" for a 2x2 max-pool.
_VGG19_CONFIG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
    512, 512, 512, 512, "M", 512, 512, 512, 512,
)  # fmt: skip

VGG19_LAYERS: dict[str, int] = {
    "relu1_2": 3,
    "relu2_2": 8,
    "relu3_4": 17,
    "relu4_4": 26,
    "relu5_4": 35,
}
"""Indices in ``vgg19().features`` of the activations the perceptual loss compares."""

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg19_features() -> nn.Sequential:
    """torchvision's ``vgg19().features`` up to relu5_4 (index 35), same module indices.

    The final max-pool (index 36) is left out: it holds no weights and no compared layer
    follows it, so a torchvision state_dict still loads key for key.
    """
    layers: list[nn.Module] = []
    channels = 3
    for entry in _VGG19_CONFIG:
        if isinstance(entry, str):
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, entry, kernel_size=3, padding=1), nn.ReLU()]
            channels = entry
    return nn.Sequential(*layers)


def _load_vgg19_features(path: Path, features: nn.Sequential) -> None:
    """Load the ``features.*`` tensors of a torchvision vgg19 state_dict into ``features``."""
    if not path.is_file():
        raise FileNotFoundError(f"VGG19 weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError) as error:
        raise ValueError(f"could not read VGG19 weights from {path}: {error}") from error
    if not isinstance(state, Mapping):
        raise ValueError(
            f"{path} does not hold a state_dict (got {type(state).__name__}); expected a "
            "torchvision vgg19 state_dict with 'features.N.weight' keys"
        )
    expected = features.state_dict()
    loaded = {
        key.removeprefix("features."): value
        for key, value in state.items()
        if key.startswith("features.")
    }
    missing = sorted(set(expected) - set(loaded))
    unexpected = sorted(set(loaded) - set(expected))
    unexpected += sorted(k for k in state if not k.startswith(("features.", "classifier.")))
    if missing or unexpected:
        raise ValueError(
            f"{path} is not a torchvision vgg19 state_dict: missing "
            f"{_preview(['features.' + k for k in missing])}, unexpected {_preview(unexpected)}"
        )
    wrong_shapes = [
        f"features.{key} {tuple(loaded[key].shape)} != {tuple(value.shape)}"
        for key, value in expected.items()
        if loaded[key].shape != value.shape
    ]
    if wrong_shapes:
        raise ValueError(f"{path} has VGG19 tensors of the wrong shape: {_preview(wrong_shapes)}")
    features.load_state_dict(loaded, assign=True)


def _preview(keys: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"[{shown}{more}]"


class VGG19PerceptualLoss(nn.Module):
    """L1 between VGG19 activations of the prediction and the target, DINet's perception loss.

    Compares relu1_2, relu2_2, relu3_4, relu4_4 and relu5_4 (the last activation of each VGG
    block, the layers style/perceptual losses usually use), each an L1 mean, summed with
    ``layer_weights`` (all 1 by default, as DINet sums its layers). Inputs in [0, 1] are
    normalised with the ImageNet statistics VGG19 was trained on. The network is frozen; the
    target's features are computed without gradient, so gradients reach only ``pred``.
    """

    def __init__(
        self,
        weights_path: str | os.PathLike[str],
        layer_weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0, 1.0),
    ) -> None:
        super().__init__()
        if len(layer_weights) != len(VGG19_LAYERS):
            raise ValueError(
                f"layer_weights needs {len(VGG19_LAYERS)} values (for {list(VGG19_LAYERS)}), "
                f"got {len(layer_weights)}"
            )
        # Built without memory and random init (20 M parameters); the file's tensors replace them.
        with torch.device("meta"):
            self.features = vgg19_features()
        _load_vgg19_features(Path(weights_path), self.features)
        self.features.requires_grad_(False)
        self.features.eval()
        self.layer_weights = tuple(float(w) for w in layer_weights)
        self._taps = tuple(VGG19_LAYERS.values())
        mean = torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def _activations(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = (images - self.mean) / self.std
        activations = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self._taps:
                activations.append(x)
        return activations

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape != target.shape or pred.dim() != 4 or pred.shape[1] != 3:
            raise ValueError(
                "expected two (B, 3, H, W) RGB images of the same shape, got "
                f"{tuple(pred.shape)} and {tuple(target.shape)}"
            )
        with torch.no_grad():
            target_features = self._activations(target)
        pred_features = self._activations(pred)
        losses = [
            weight * F.l1_loss(p, t)
            for weight, p, t in zip(self.layer_weights, pred_features, target_features, strict=True)
        ]
        return torch.stack(losses).sum()
