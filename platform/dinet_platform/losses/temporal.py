"""Temporal-consistency loss for generated clips: the fix for DINet's jitter.

DINet's original losses judge each frame alone, so a model can be right on average and still
flicker from frame to frame. This loss compares how the generated clip *changes over time*
with how the real clip changes. Clips are (B, T, C, H, W) with T >= 2; ``g`` is the generated
clip, ``r`` the real (target) one, and ``e = g - r`` the per-frame error. Every term is a mean
absolute difference of temporal changes, so it is exactly 0 when ``g == r`` and, more generally,
whenever the error is constant in time (a stable colour shift is the reconstruction losses'
business, not this one's).

- ``frame_diff``: ``|(g_t - g_{t-1}) - (r_t - r_{t-1})| = |e_t - e_{t-1}|``, averaged over all
  pixels, channels and consecutive pairs.
- ``optical_flow``: the flow ``f`` from each real frame to the one before is estimated with
  :func:`~dinet_platform.losses.flow.estimate_flow` (no gradient), so ``warp(r_{t-1}, f) ≈ r_t``.
  The term is ``|(g_t - warp(g_{t-1}, f)) - (r_t - warp(r_{t-1}, f))| = |e_t - warp(e_{t-1}, f)|``
  averaged over the pixels the forward-backward check marks reliable (not occluded, not leaving
  the frame). Where the head moves, frame_diff alone would demand the generated pixels change
  exactly as the real ones do at the same place; following the motion instead penalises
  flicker and motion the real video does not have.
- ``mouth_temporal``: frame_diff restricted to the mouth box (mean over mask pixels), the region
  DINet regenerates and where jitter shows most; changes outside the mouth do not count.
- ``long_term``: the frame_diff comparison at lags 2 .. ``window - 1``
  (``|e_t - e_{t-k}|``; lag 1 is frame_diff), each lag averaged over all pairs in the clip and
  the lags averaged. It catches slow drift that single-step differences hide. Clips shorter
  than the window use the lags they have; a 2-frame clip has none and the term is 0.

``total`` is the weighted sum with :class:`~dinet_platform.config.schema.TemporalWeights`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dinet_platform.config.schema import TemporalWeights
from dinet_platform.geometry import mouth_prior
from dinet_platform.losses.flow import estimate_flow, occlusion_mask, warp


@dataclass(frozen=True)
class TemporalLossTerms:
    """Each term of :class:`TemporalConsistencyLoss` (scalar tensors) and their weighted sum."""

    frame_diff: torch.Tensor
    optical_flow: torch.Tensor
    mouth_temporal: torch.Tensor
    long_term: torch.Tensor
    total: torch.Tensor

    def as_dict(self) -> dict[str, float]:
        """Plain floats, for logging."""
        return {
            "frame_diff": self.frame_diff.item(),
            "optical_flow": self.optical_flow.item(),
            "mouth_temporal": self.mouth_temporal.item(),
            "long_term": self.long_term.item(),
            "total": self.total.item(),
        }


class TemporalConsistencyLoss(nn.Module):
    """Temporal-consistency terms for (B, T, C, H, W) clips; see the module docstring.

    ``mouth_mask`` is a (1, 1, H, W) 0/1 mask of the mouth box (as from
    :func:`dinet_platform.geometry.mouth_mask`); without one, the mouth box is taken from
    :func:`dinet_platform.geometry.mouth_prior` at the clip's resolution.
    """

    mouth_mask: torch.Tensor | None

    def __init__(self, weights: TemporalWeights, mouth_mask: torch.Tensor | None = None) -> None:
        super().__init__()
        self.weights = weights
        if mouth_mask is not None and (mouth_mask.dim() != 4 or mouth_mask.shape[:2] != (1, 1)):
            raise ValueError(f"mouth_mask must be (1, 1, H, W), got {tuple(mouth_mask.shape)}")
        # A buffer so that .to(device) moves it; not persistent, as it is derived from config.
        self.register_buffer("mouth_mask", mouth_mask, persistent=False)

    @property
    def active(self) -> bool:
        """Whether any term has a weight (an inactive loss need not be computed)."""
        w = self.weights
        return any(v > 0 for v in (w.frame_diff, w.optical_flow, w.mouth_temporal, w.long_term))

    def forward(self, generated: torch.Tensor, target: torch.Tensor) -> TemporalLossTerms:
        if generated.dim() != 5 or generated.shape != target.shape:
            raise ValueError(
                "expected generated and target clips of the same (B, T, C, H, W) shape, got "
                f"{tuple(generated.shape)} and {tuple(target.shape)}"
            )
        if generated.shape[1] < 2:
            raise ValueError(f"temporal loss needs at least 2 frames, got T={generated.shape[1]}")
        error = generated - target
        step = error[:, 1:] - error[:, :-1]
        weights = self.weights
        frame_diff = step.abs().mean()
        mouth_temporal = self._mouth_mean(step.abs())
        # Flow estimation is most of this loss's cost: skipped (reported as 0) at weight 0.
        optical_flow = (self._flow_term(error, target.detach()) if weights.optical_flow > 0
                        else error.new_zeros(()))
        long_term = self._long_term(error)
        total = (
            weights.frame_diff * frame_diff
            + weights.optical_flow * optical_flow
            + weights.mouth_temporal * mouth_temporal
            + weights.long_term * long_term
        )
        return TemporalLossTerms(frame_diff, optical_flow, mouth_temporal, long_term, total)

    def _mouth_mean(self, values: torch.Tensor) -> torch.Tensor:
        """Mean of (B, T', C, H, W) ``values`` over the mouth-box pixels."""
        height, width = values.shape[-2:]
        mask = self.mouth_mask
        if mask is None:
            mask = mouth_prior(height, width, device=values.device)
        elif mask.shape[-2:] != (height, width):
            raise ValueError(
                f"mouth_mask is {tuple(mask.shape[-2:])} but the frames are {(height, width)}"
            )
        mask = mask.to(values.dtype).unsqueeze(0).expand_as(values)
        return (values * mask).sum() / mask.sum().clamp_min(1.0)

    def _flow_term(self, error: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Error change along the real motion, over reliable pixels (see the module docstring)."""
        current = target[:, 1:].flatten(0, 1)
        previous = target[:, :-1].flatten(0, 1)
        # Forward and backward flow in one batched call.
        flows = estimate_flow(torch.cat([current, previous]), torch.cat([previous, current]))
        flow_fw, flow_bw = flows.chunk(2)
        reliable = occlusion_mask(flow_fw, flow_bw).to(error.dtype)
        residual = error[:, 1:].flatten(0, 1) - warp(error[:, :-1].flatten(0, 1), flow_fw)
        reliable = reliable.expand_as(residual)
        return (residual.abs() * reliable).sum() / reliable.sum().clamp_min(1.0)

    def _long_term(self, error: torch.Tensor) -> torch.Tensor:
        frames = error.shape[1]
        lags = range(2, min(self.weights.window - 1, frames - 1) + 1)
        if not lags:
            return error.new_zeros(())
        terms = [(error[:, lag:] - error[:, :-lag]).abs().mean() for lag in lags]
        return torch.stack(terms).mean()
