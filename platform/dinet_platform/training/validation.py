"""Validation metrics of a stage, accumulated over held-out clips (plain PyTorch).

Per frame: whole-crop L1, mouth-box PSNR and SSIM (the same functions evaluation uses), and the
temporal error ``mean |e_t - e_{t-1}|`` of the generated clip against the real one (0 when the
generated clip changes exactly as the real one does). PSNR is capped at 100 dB per frame so an
exact reconstruction cannot make the average infinite. With a sync expert, also ``val_sync``:
the expert's mean cosine similarity between each generated clip's mouths and its audio.

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
        # per-frame sums of METRICS, frame count, then sync similarity sum and clip count
        self.sums = torch.zeros(len(METRICS) + 3, dtype=torch.float64, device=device)

    @torch.no_grad()
    def add(
        self,
        fake: torch.Tensor,
        real: torch.Tensor,
        mouth_mask: torch.Tensor,
        clip_audio: torch.Tensor | None = None,
    ) -> None:
        """``fake`` and ``real`` are (B, T, 3, H, W) clips; ``mouth_mask`` (1 or B, 1, H, W);
        ``clip_audio`` (B, T, C, A) is needed for the sync metric."""
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
        totals = [*values, torch.tensor(float(frames)), sync, clips]
        self.sums += torch.stack([v.double().cpu() for v in totals]).to(self.sums.device)

    def means(self) -> dict[str, float]:
        frames = max(float(self.sums[len(METRICS)]), 1.0)
        metrics = {f"val_{name}": float(self.sums[i]) / frames for i, name in enumerate(METRICS)}
        metrics["val_frames"] = float(self.sums[len(METRICS)])
        if float(self.sums[-1]) > 0:
            metrics["val_sync"] = float(self.sums[-2]) / float(self.sums[-1])
        metrics["val_score"] = validation_score(metrics)
        return metrics


def validation_score(metrics: dict[str, float]) -> float:
    return (
        metrics["val_mouth_ssim"]
        + metrics["val_mouth_psnr"] / 40.0
        - 5.0 * metrics["val_temporal_error"]
        + 0.5 * metrics.get("val_sync", 0.0)
    )
