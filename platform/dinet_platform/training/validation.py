"""Validation metrics of a stage, accumulated over held-out clips (plain PyTorch).

Per frame: whole-crop L1, mouth-box PSNR and SSIM (the same functions evaluation uses), and the
temporal error ``mean |e_t - e_{t-1}|`` of the generated clip against the real one (0 when the
generated clip changes exactly as the real one does). PSNR is capped at 100 dB per frame so an
exact reconstruction cannot make the average infinite. With a sync expert, also ``val_sync``:
the expert's mean cosine similarity between each generated clip's mouths and its audio.

``val_audio_gain_db`` says whether the model uses the audio at all: the mouth PSNR with each
clip's own audio minus the mouth PSNR with another clip's audio (the batch's audio rolled by
one), the rest of the input unchanged. A model that ignores the audio scores 0 however sharp
its mouths are; the curve over epochs shows when a run starts listening.

The validation score (checkpoint ranking and the sweep objective; higher is better) is::

    val_score = val_mouth_ssim + val_mouth_psnr / 40 - 5 * val_temporal_error [+ 0.5 * val_sync]

SSIM (0..1) and PSNR / 40 (about 0.5..1 for useful models) weigh alike; the temporal error is
small in absolute terms (a few hundredths), hence its factor; the sync term (-1..1) is present
only when a sync expert is configured (``loss.sync_expert``), so compare scores within runs
that share that setting.
"""

from __future__ import annotations

import torch

from dinet_platform.geometry import Box
from dinet_platform.metrics import PSNR_CAP_DB, psnr, ssim
from dinet_platform.models.syncnet import SyncNet, clip_audio_track

METRICS = ("l1", "mouth_psnr", "mouth_ssim", "temporal_error")
_SYNC, _CLIPS, _GAIN, _GAIN_FRAMES = range(len(METRICS) + 1, len(METRICS) + 5)


class ValidationAccumulator:
    def __init__(
        self,
        device: torch.device | str = "cpu",
        syncnet: SyncNet | None = None,
        mouth: Box | None = None,
    ):
        if syncnet is not None and mouth is None:
            raise ValueError("the sync metric needs the mouth box")
        self.syncnet, self.mouth = syncnet, mouth
        # per-frame sums of METRICS, frame count, sync similarity sum and clip count, then the
        # audio gain's sum and frame count
        self.sums = torch.zeros(len(METRICS) + 5, dtype=torch.float64, device=device)

    @torch.no_grad()
    def add(
        self,
        fake: torch.Tensor,
        real: torch.Tensor,
        mouth_mask: torch.Tensor,
        clip_audio: torch.Tensor | None = None,
        fake_other_audio: torch.Tensor | None = None,
    ) -> None:
        """``fake`` and ``real`` are (B, T, 3, H, W) clips; ``mouth_mask`` (1 or B, 1, H, W);
        ``clip_audio`` (B, T, C, A) is needed for the sync metric; ``fake_other_audio``, the
        same inputs generated with another clip's audio, for the audio gain."""
        fake, real = fake.float(), real.float()
        frames = fake.shape[0] * fake.shape[1]
        mask = mouth_mask[:1].expand(frames, -1, -1, -1)
        fake_frames, real_frames = fake.flatten(0, 1), real.flatten(0, 1)
        error = fake - real
        temporal = (error[:, 1:] - error[:, :-1]).abs().mean((2, 3, 4))  # (B, T-1)
        values = [
            (fake_frames - real_frames).abs().mean((1, 2, 3)).sum(),
            psnr(fake_frames, real_frames, mask=mask).clamp(max=PSNR_CAP_DB).sum(),
            ssim(fake_frames, real_frames, mask=mask).sum(),
            temporal.mean(1).repeat_interleave(fake.shape[1]).sum(),
        ]
        sync, clips = torch.tensor(0.0), torch.tensor(0.0)
        if self.syncnet is not None and clip_audio is not None:
            rows, cols = self.mouth.slices()
            similarity = self.syncnet(fake[..., rows, cols], clip_audio_track(clip_audio))
            sync, clips = similarity.sum(), torch.tensor(float(fake.shape[0]))
        gain, gain_frames = torch.tensor(0.0), torch.tensor(0.0)
        if fake_other_audio is not None:
            other = psnr(fake_other_audio.float().flatten(0, 1), real_frames, mask=mask)
            gain = values[1] - other.clamp(max=PSNR_CAP_DB).sum()
            gain_frames = torch.tensor(float(frames))
        totals = [*values, torch.tensor(float(frames)), sync, clips, gain, gain_frames]
        self.sums += torch.stack([v.double().cpu() for v in totals]).to(self.sums.device)

    def means(self) -> dict[str, float]:
        frames = max(float(self.sums[len(METRICS)]), 1.0)
        metrics = {f"val_{name}": float(self.sums[i]) / frames for i, name in enumerate(METRICS)}
        metrics["val_frames"] = float(self.sums[len(METRICS)])
        if float(self.sums[_CLIPS]) > 0:
            metrics["val_sync"] = float(self.sums[_SYNC]) / float(self.sums[_CLIPS])
        if float(self.sums[_GAIN_FRAMES]) > 0:
            metrics["val_audio_gain_db"] = float(self.sums[_GAIN]) / float(self.sums[_GAIN_FRAMES])
        metrics["val_score"] = validation_score(metrics)
        return metrics


def validation_score(metrics: dict[str, float]) -> float:
    return (
        metrics["val_mouth_ssim"]
        + metrics["val_mouth_psnr"] / 40.0
        - 5.0 * metrics["val_temporal_error"]
        + 0.5 * metrics.get("val_sync", 0.0)
    )
