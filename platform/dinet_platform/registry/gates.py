"""Promotion gates: is a candidate measurably no worse than the current alias holder?

Pure functions on two metric dicts from the *same* evaluation run (same held-out frames, same
sync expert), so the comparison is fair by construction. Each gate bounds how much worse one
metric may be (:class:`~dinet_platform.config.schema.GateConfig`):

- ``mouth_psnr``: candidate >= holder - ``max_mouth_psnr_drop_db``
- ``mouth_ssim``: candidate >= holder - ``max_mouth_ssim_drop``
- ``lse_c`` (sync confidence): candidate >= holder - ``max_sync_confidence_drop``; skipped when
  no sync expert was available, unless ``require_sync_expert`` (then it fails)
- ``warp_error``: candidate <= holder * (1 + ``max_warp_error_increase``)

With no current holder there is nothing to compare against and every gate passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dinet_platform.config.schema import GateConfig


@dataclass(frozen=True)
class GateResult:
    metric: str
    candidate: float | None
    holder: float | None
    limit: float | None
    """The worst value the candidate may have."""
    passed: bool
    skipped: bool = False
    note: str = ""

    def describe(self) -> str:
        if self.skipped:
            return f"{self.metric}: skipped ({self.note})"
        if self.holder is None or self.limit is None:
            return f"{self.metric}: {self.note or 'passed'}"
        sign = ">=" if self.metric not in ("warp_error",) else "<="
        verdict = "ok" if self.passed else "FAILED"
        return (f"{self.metric}: {self.candidate:.4g} vs holder {self.holder:.4g} "
                f"(needs {sign} {self.limit:.4g}) {verdict}")


def _at_least(metric: str, candidate: float, holder: float, margin: float) -> GateResult:
    limit = holder - margin
    passed = candidate >= limit or (math.isinf(holder) and math.isinf(candidate))
    return GateResult(metric, candidate, holder, limit, passed)


def check_gates(
    candidate: dict[str, float],
    holder: dict[str, float] | None,
    gates: GateConfig,
) -> list[GateResult]:
    """One result per gate (see the module docstring)."""
    if holder is None:
        return [GateResult("all", None, None, None, True, note="no current holder: passed")]
    results = [
        _at_least("mouth_psnr", candidate["mouth_psnr"], holder["mouth_psnr"],
                  gates.max_mouth_psnr_drop_db),
        _at_least("mouth_ssim", candidate["mouth_ssim"], holder["mouth_ssim"],
                  gates.max_mouth_ssim_drop),
    ]
    if "lse_c" in candidate and "lse_c" in holder:
        results.append(_at_least("lse_c", candidate["lse_c"], holder["lse_c"],
                                 gates.max_sync_confidence_drop))
    elif gates.require_sync_expert:
        results.append(GateResult("lse_c", None, None, None, False,
                                  note="no sync expert, and gates.require_sync_expert is set"))
    else:
        results.append(GateResult("lse_c", None, None, None, True, skipped=True,
                                  note="no sync expert available"))
    limit = holder["warp_error"] * (1.0 + gates.max_warp_error_increase)
    results.append(GateResult("warp_error", candidate["warp_error"], holder["warp_error"], limit,
                              candidate["warp_error"] <= limit))
    return results


def gates_passed(results: list[GateResult]) -> bool:
    return all(r.passed for r in results)


def summary(results: list[GateResult]) -> str:
    return "; ".join(r.describe() for r in results)
