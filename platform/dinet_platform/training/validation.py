"""Validation metrics of a stage, accumulated over held-out clips (plain PyTorch).

Per frame: whole-crop L1, mouth-box PSNR and SSIM (the same functions evaluation uses), and the
temporal error ``mean |e_t - e_{t-1}|`` of the generated clip against the real one (0 when the
generated clip changes exactly as the real one does). PSNR is capped at 100 dB per frame so an
exact reconstruction cannot make the average infinite.

The checkpoint score (higher is better) is::

    val_score = val_mouth_ssim + val_mouth_psnr / 40 - 5 * val_temporal_error

SSIM (0..1) and PSNR / 40 (about 0.5..1 for useful models) weigh alike; the temporal error is
small in absolute terms (a few hundredths), hence its factor.
"""

from __future__ import annotations

import torch

from dinet_platform.metrics import psnr, ssim

PSNR_CAP_DB = 100.0
METRICS = ("l1", "mouth_psnr", "mouth_ssim", "temporal_error")


class ValidationAccumulator:
    def __init__(self, device: torch.device | str = "cpu"):
        self.sums = torch.zeros(len(METRICS) + 1, dtype=torch.float64, device=device)

    @torch.no_grad()
    def add(self, fake: torch.Tensor, real: torch.Tensor, mouth_mask: torch.Tensor) -> None:
        """``fake`` and ``real`` are (B, T, 3, H, W) clips; ``mouth_mask`` (1 or B, 1, H, W)."""
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
        self.sums += torch.stack([*(v.double() for v in values), torch.tensor(frames)]).to(
            self.sums.device
        )

    def means(self) -> dict[str, float]:
        count = max(float(self.sums[-1]), 1.0)
        metrics = {f"val_{name}": float(self.sums[i]) / count for i, name in enumerate(METRICS)}
        metrics["val_score"] = validation_score(metrics)
        metrics["val_frames"] = float(self.sums[-1])
        return metrics


def validation_score(metrics: dict[str, float]) -> float:
    return (
        metrics["val_mouth_ssim"]
        + metrics["val_mouth_psnr"] / 40.0
        - 5.0 * metrics["val_temporal_error"]
    )
