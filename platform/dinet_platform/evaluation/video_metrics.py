"""Evaluation metrics of a generated video against the real one (plain PyTorch, no Ray/MLflow).

Each metric is computed per video as sums (:class:`VideoMetrics`) so that videos of different
lengths pool correctly; :func:`summarize` turns the pooled sums into the reported numbers:

- ``mouth_psnr`` (dB): PSNR over the mouth-box pixels of all frames (MSE pooled, then
  ``10 log10(1 / MSE)``); ``inf`` when the mouths are identical.
- ``mouth_ssim``: SSIM averaged over the mouth-box pixels of every frame (1 = identical).
- ``outside_psnr`` (dB): PSNR over the crop *outside* the mouth box: what a generator changes
  where it should change nothing (the source is given there).
- ``seam_psnr`` (dB): PSNR over a band of ``mouth_size / 16`` pixels on both sides of the
  mouth box's border: the visible box / seam artifact DINet users complain about.
- ``warp_error``: mean ``|e_t - warp(e_{t-1}, f_t)|`` with ``e = generated - real`` and ``f_t``
  the real video's optical flow, over the pixels the forward-backward check marks reliable: the
  flow-warping error of the generated sequence relative to the real one (0 when the generated
  video moves exactly as the real one): the temporal loss's ``optical_flow`` term, averaged per
  frame pair over whole videos.
- ``frame_diff_error``: mean ``|(g_t - g_{t-1}) - (r_t - r_{t-1})|`` (the validation
  ``temporal_error``; 0 for identical videos).
- ``temporal_consistency``: ``1 - sum|dg - dr| / (sum|dg| + sum|dr|)`` over consecutive
  frame differences, in [0, 1]: 1 when the generated frames change exactly as the real ones,
  0 when the changes are unrelated, opposite, or absent (a frozen output).
- ``lse_d``, ``lse_c``, ``sync_offset``, ``sync_offset_abs``: the sync expert's SyncNet-style
  distance (lower is better), confidence (higher is better) and best audio offset in frames
  (median over videos, and mean |offset|) -- see :mod:`.sync_expert`.
- ``mouth_open_error_px``, ``mouth_open_corr``: where the landmarks track the lips (synthetic
  data, OpenFace CSVs): the mouth opening read off each generated frame (:class:`LipReader`)
  against the true inner-lip distance (iBUG 62-66) in pixels at the evaluation size -- mean
  absolute error and Pearson correlation over frames. ``mouth_open_error_px`` of the real video
  is the reader's own error (the floor).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from dinet_platform.evaluation.data import INNER_BOTTOM, INNER_TOP, UPPER_LIP_TOP
from dinet_platform.geometry import crop_geometry, mouth_mask
from dinet_platform.losses.flow import estimate_flow, occlusion_mask, warp
from dinet_platform.metrics import psnr_from_mse, ssim

IMAGE_METRICS = ("mouth_psnr", "mouth_ssim", "outside_psnr", "seam_psnr")
TEMPORAL_METRICS = ("warp_error", "frame_diff_error", "temporal_consistency")
SYNC_METRICS = ("lse_d", "lse_c", "sync_offset", "sync_offset_abs")
OPENING_METRICS = ("mouth_open_error_px", "mouth_open_corr")
METRICS = IMAGE_METRICS + TEMPORAL_METRICS + SYNC_METRICS + OPENING_METRICS

HIGHER_IS_BETTER = {
    "mouth_psnr": True, "mouth_ssim": True, "outside_psnr": True, "seam_psnr": True,
    "warp_error": False, "frame_diff_error": False, "temporal_consistency": True,
    "lse_d": False, "lse_c": True, "sync_offset_abs": False,
    "mouth_open_error_px": False, "mouth_open_corr": True,
}
TEMPORAL_CHUNK = 32
"""Frame pairs per flow / temporal-metric call."""


def seam_mask(mouth_size: int) -> torch.Tensor:
    """(1, 1, H, W) band of ``max(1, m // 16)`` pixels on both sides of the mouth box border."""
    geometry = crop_geometry(mouth_size)
    band = max(1, mouth_size // 16)
    height, width = geometry.crop_shape
    box = geometry.mouth
    grown = torch.zeros(1, 1, height, width)
    grown[..., max(box.top - band, 0) : box.bottom + band,
          max(box.left - band, 0) : box.right + band] = 1
    shrunk = torch.zeros_like(grown)
    shrunk[..., box.top + band : box.bottom - band, box.left + band : box.right - band] = 1
    return grown - shrunk


@dataclass
class VideoMetrics:
    """Sums of one video (or of several, after :meth:`merge`)."""

    frames: int = 0
    sq_err: dict[str, float] = field(default_factory=dict)
    """Squared-error sums per region ('mouth', 'outside', 'seam')."""
    pixels: dict[str, float] = field(default_factory=dict)
    ssim_sum: float = 0.0
    pairs: int = 0
    warp_sum: float = 0.0
    diff_sum: float = 0.0
    diff_gen: float = 0.0
    diff_real: float = 0.0
    diff_mismatch: float = 0.0
    sync: list[dict[str, float]] = field(default_factory=list)
    """Per video: lse_d, lse_c, offset, windows."""
    opening_pred: list[float] = field(default_factory=list)
    opening_true: list[float] = field(default_factory=list)

    def merge(self, other: VideoMetrics) -> VideoMetrics:
        merged = VideoMetrics(
            frames=self.frames + other.frames,
            sq_err={k: self.sq_err.get(k, 0.0) + other.sq_err.get(k, 0.0)
                    for k in {*self.sq_err, *other.sq_err}},
            pixels={k: self.pixels.get(k, 0.0) + other.pixels.get(k, 0.0)
                    for k in {*self.pixels, *other.pixels}},
            ssim_sum=self.ssim_sum + other.ssim_sum,
            pairs=self.pairs + other.pairs,
            warp_sum=self.warp_sum + other.warp_sum,
            diff_sum=self.diff_sum + other.diff_sum,
            diff_gen=self.diff_gen + other.diff_gen,
            diff_real=self.diff_real + other.diff_real,
            diff_mismatch=self.diff_mismatch + other.diff_mismatch,
            sync=self.sync + other.sync,
            opening_pred=self.opening_pred + other.opening_pred,
            opening_true=self.opening_true + other.opening_true,
        )
        return merged


def summarize(sums: VideoMetrics) -> dict[str, float]:
    """The reported metrics (module docstring) from pooled sums; absent ones are left out."""
    out: dict[str, float] = {}
    names = {"mouth": "mouth_psnr", "outside": "outside_psnr", "seam": "seam_psnr"}
    for region, name in names.items():
        if sums.pixels.get(region):
            out[name] = psnr_from_mse(sums.sq_err[region] / sums.pixels[region])
    if sums.frames:
        out["mouth_ssim"] = sums.ssim_sum / sums.frames
    if sums.pairs:
        out["warp_error"] = sums.warp_sum / sums.pairs
        out["frame_diff_error"] = sums.diff_sum / sums.pairs
        total = sums.diff_gen + sums.diff_real
        out["temporal_consistency"] = 1.0 - sums.diff_mismatch / total if total > 0 else 1.0
    if sums.sync:
        windows = np.array([s["windows"] for s in sums.sync], dtype=np.float64)
        for key in ("lse_d", "lse_c"):
            values = np.array([s[key] for s in sums.sync])
            out[key] = float((values * windows).sum() / windows.sum())
        offsets = np.array([s["offset"] for s in sums.sync])
        out["sync_offset"] = float(np.median(offsets))
        out["sync_offset_abs"] = float(np.abs(offsets).mean())
    if sums.opening_true:
        pred, true = np.array(sums.opening_pred), np.array(sums.opening_true)
        out["mouth_open_error_px"] = float(np.abs(pred - true).mean())
        out["mouth_open_corr"] = _correlation(pred, true)
    return out


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


@torch.no_grad()
def image_sums(generated: torch.Tensor, real: torch.Tensor, mouth_size: int) -> VideoMetrics:
    """Region squared errors and mouth SSIM of (N, 3, H, W) videos in [0, 1]."""
    mouth = mouth_mask(mouth_size)
    regions = {"mouth": mouth, "outside": 1.0 - mouth, "seam": seam_mask(mouth_size)}
    sums = VideoMetrics(frames=len(generated))
    squared = (generated.float() - real.float()).square()
    for name, mask in regions.items():
        sums.sq_err[name] = float((squared * mask).sum())
        sums.pixels[name] = float(mask.sum()) * squared.shape[1] * len(generated)
    sums.ssim_sum = float(ssim(generated, real, mask=mouth).sum())
    return sums


@dataclass
class RealMotion:
    """The real video's optical flow between consecutive frames and where it is reliable,
    computed once per video and shared by every entry's warping error."""

    flow: torch.Tensor
    """(N-1, 2, H, W): ``warp(real[t-1], flow[t-1]) ~ real[t]``."""
    reliable: torch.Tensor
    """(N-1, 1, H, W) 0/1 forward-backward consistency mask."""


@torch.no_grad()
def real_motion(real: torch.Tensor) -> RealMotion:
    """Flow of (N, 3, H, W) real frames, with the temporal loss's estimator and occlusion
    check (:mod:`dinet_platform.losses.flow`), in chunks to bound memory."""
    flows, masks = [], []
    for start in range(0, len(real) - 1, TEMPORAL_CHUNK):
        current = real[start + 1 : start + 1 + TEMPORAL_CHUNK].float()
        previous = real[start : start + len(current)].float()
        both = estimate_flow(torch.cat([current, previous]), torch.cat([previous, current]))
        forward, backward = both.chunk(2)
        flows.append(forward)
        masks.append(occlusion_mask(forward, backward))
    if not flows:
        empty = real.new_zeros(0, 2, *real.shape[-2:])
        return RealMotion(empty, empty[:, :1])
    return RealMotion(torch.cat(flows), torch.cat(masks))


@torch.no_grad()
def temporal_sums(generated: torch.Tensor, real: torch.Tensor,
                  motion: RealMotion | None = None) -> VideoMetrics:
    """Warping error, frame-difference error and consistency sums of (N, 3, H, W) videos.

    The warping error is the temporal loss's ``optical_flow`` term
    (:class:`~dinet_platform.losses.temporal.TemporalConsistencyLoss`) over the whole video,
    averaged per frame pair: ``|e_t - warp(e_{t-1}, f)|`` over the reliable pixels.
    """
    sums = VideoMetrics()
    if len(generated) < 2:
        return sums
    motion = motion or real_motion(real)
    for start in range(0, len(generated) - 1, TEMPORAL_CHUNK):
        stop = min(start + TEMPORAL_CHUNK + 1, len(generated))
        error = generated[start:stop].float() - real[start:stop].float()
        flow, reliable = motion.flow[start : stop - 1], motion.reliable[start : stop - 1]
        residual = (error[1:] - warp(error[:-1], flow)).abs()
        weight = reliable.expand_as(residual)
        per_pair = (residual * weight).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp_min(1)
        sums.pairs += len(per_pair)
        sums.warp_sum += float(per_pair.sum())
        fake_step = generated[start + 1 : stop].float() - generated[start : stop - 1].float()
        real_step = real[start + 1 : stop].float() - real[start : stop - 1].float()
        mismatch = (fake_step - real_step).abs()
        sums.diff_sum += float(mismatch.flatten(1).mean(1).sum())
        sums.diff_gen += float(fake_step.abs().sum())
        sums.diff_real += float(real_step.abs().sum())
        sums.diff_mismatch += float(mismatch.sum())
    return sums


def true_opening(landmarks: torch.Tensor) -> torch.Tensor:
    """(N,) inner-lip opening in pixels: iBUG 66 minus 62 (vertical) from (N, 20, 2) points."""
    return landmarks[:, INNER_BOTTOM, 1] - landmarks[:, INNER_TOP, 1]


class LipReader:
    """Reads the mouth opening off a frame by colour, calibrated on one video's real frames.

    From the real frames and their landmarks it samples labelled pixel colours: inside the
    inner lip contour (iBUG 60-67: mouth interior, teeth, tongue), on the lips (between the
    outer contour 48-59 and the inner one) and everything else in the crop. A frame's opening
    is then the longest vertical run of pixels classified as interior (5-nearest-neighbour
    vote) in the three columns through the centre of the inner lips (median of the three),
    searched from the real upper lip's top (iBUG 51) down to ``0.6 * mouth_size`` below it. The
    landmarks only say *where* to look (the generated frame shares the real frame's head pose,
    since the source outside the mouth is given); the opening itself comes from the pixels.
    """

    def __init__(self, frames: torch.Tensor, landmarks: torch.Tensor, *, samples: int = 600,
                 seed: int = 0):
        import cv2  # only needed here; keeps the module import light

        rng = np.random.default_rng(seed)
        height, width = frames.shape[-2:]
        colours: list[np.ndarray] = []
        labels: list[np.ndarray] = []
        pools: dict[int, list[np.ndarray]] = {0: [], 1: [], 2: []}
        step = max(1, len(frames) // 24)
        for index in range(0, len(frames), step):
            points = landmarks[index].numpy()
            outer = np.zeros((height, width), np.uint8)
            inner = np.zeros((height, width), np.uint8)
            cv2.fillPoly(outer, [np.round(points[:12] * 16).astype(np.int32)], 1,
                         cv2.LINE_8, 4)
            cv2.fillPoly(inner, [np.round(points[12:] * 16).astype(np.int32)], 1,
                         cv2.LINE_8, 4)
            image = frames[index].permute(1, 2, 0).numpy()
            lips = (outer == 1) & (cv2.dilate(inner, np.ones((3, 3), np.uint8)) == 0)
            interior = cv2.erode(inner, np.ones((2, 2), np.uint8)) == 1
            skin = cv2.dilate(outer, np.ones((3, 3), np.uint8)) == 0
            for label, region in ((0, skin), (1, lips), (2, interior)):
                if region.any():
                    pools[label].append(image[region])
        for label, pool in pools.items():
            if not pool:
                continue
            values = np.concatenate(pool)
            take = rng.choice(len(values), size=min(samples, len(values)), replace=False)
            colours.append(values[take])
            labels.append(np.full(len(take), label))
        self.colours = torch.from_numpy(np.concatenate(colours)).float()
        self.labels = torch.from_numpy(np.concatenate(labels))
        self.has_interior = bool((self.labels == 2).any())

    def interior(self, pixels: torch.Tensor, k: int = 5) -> torch.Tensor:
        """(P,) bool: which (P, 3) pixel colours look like the mouth interior."""
        distances = torch.cdist(pixels.float(), self.colours)
        nearest = distances.topk(min(k, len(self.colours)), largest=False).indices
        votes = (self.labels[nearest] == 2).float().mean(1)
        return votes > 0.5

    @torch.no_grad()
    def openings(self, frames: torch.Tensor, landmarks: torch.Tensor,
                 mouth_size: int) -> torch.Tensor:
        """(N,) opening in pixels of (N, 3, H, W) crops of ``mouth_size`` in [0, 1], read in
        the mouth box at the columns ``landmarks`` give."""
        if not self.has_interior:
            return torch.zeros(len(frames))
        box = crop_geometry(mouth_size).mouth
        width = frames.shape[-1]
        centre_x = ((landmarks[:, INNER_TOP, 0] + landmarks[:, INNER_BOTTOM, 0]) / 2).round()
        columns = (centre_x.long()[:, None] + torch.tensor([-1, 0, 1])).clamp(0, width - 1)
        span = max(2, round(0.6 * mouth_size))
        tops = (landmarks[:, UPPER_LIP_TOP, 1].floor().long() - 1).clamp(box.top, box.bottom - 1)
        strips = torch.stack([
            frames[i, :, int(tops[i]) : int(tops[i]) + span][..., columns[i]]
            for i in range(len(frames))
        ]) if bool((tops + span <= frames.shape[-2]).all()) else None
        if strips is None:  # the window would leave the crop: pad with zeros (never interior)
            padded = torch.nn.functional.pad(frames, (0, 0, 0, span))
            strips = torch.stack([padded[i, :, int(tops[i]) : int(tops[i]) + span][..., columns[i]]
                                  for i in range(len(frames))])
        # (N, channel, row, column) -> pixels ordered (N, column, row)
        pixels = strips.permute(0, 3, 2, 1).reshape(-1, 3)
        inside = self.interior(pixels).view(len(frames), 3, span)
        return torch.tensor([
            float(np.median([_longest_run(inside[i, c]) for c in range(3)]))
            for i in range(len(frames))
        ])


def _longest_run(flags: torch.Tensor) -> int:
    best = run = 0
    for value in flags.tolist():
        run = run + 1 if value else 0
        best = max(best, run)
    return best
