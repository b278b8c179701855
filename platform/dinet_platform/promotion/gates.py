"""Promotion gates: does a candidate beat the baselines, and is it no worse than the holder?

Pure functions on metric dicts from the *same* evaluation run (same held-out frames, same
sync expert), so the comparison is fair by construction
(:class:`~dinet_platform.config.schema.GateConfig`).

The floor, checked whether or not the alias has a holder (a model that does not beat the
still-mouth baseline is a failed run, whatever came before it):

- ``floor_mouth_psnr``: candidate >= ``paste_reference`` + ``min_mouth_psnr_gain_db``
- ``floor_audio``: the mouth follows the audio: ``mouth_open_corr`` >= ``min_mouth_open_corr``
  (lip reader) and ``lse_c`` > ``paste_reference``'s + ``min_sync_confidence_gain`` (sync
  expert), each where it was measured; with neither measured, it fails (nothing shows the
  model uses the audio)

Against the current holder, each gate bounds how much worse one metric may be:

- ``mouth_psnr``: candidate >= holder - ``max_mouth_psnr_drop_db``
- ``mouth_ssim``: candidate >= holder - ``max_mouth_ssim_drop``
- ``lse_c`` (sync confidence): candidate >= holder - ``max_sync_confidence_drop``; skipped when
  no sync expert was available, unless ``require_sync_expert`` (then it fails)
- ``warp_error``: candidate <= holder * (1 + ``max_warp_error_increase``)

With no current holder only the floor applies.
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
        verdict = "ok" if self.passed else "FAILED"
        if self.holder is None or self.limit is None:
            return f"{self.metric}: {self.note or verdict}"
        sign = ">=" if self.metric not in ("warp_error",) else "<="
        against = "paste_reference" if self.metric.startswith("floor") else "holder"
        return (f"{self.metric}: {self.candidate:.4g} vs {against} {self.holder:.4g} "
                f"(needs {sign} {self.limit:.4g}) {verdict}")


def _at_least(metric: str, candidate: float, holder: float, margin: float) -> GateResult:
    limit = holder - margin
    passed = candidate >= limit or (math.isinf(holder) and math.isinf(candidate))
    return GateResult(metric, candidate, holder, limit, passed)


def floor_gates(
    candidate: dict[str, float], baseline: dict[str, float] | None, gates: GateConfig
) -> list[GateResult]:
    """The floor: beat ``paste_reference`` (``baseline``) on the mouth and use the audio."""
    if baseline is None:
        return [GateResult("floor", None, None, None, False,
                           note="no paste_reference baseline in the evaluation to compare with")]
    psnr_limit = baseline["mouth_psnr"] + gates.min_mouth_psnr_gain_db
    results = [GateResult("floor_mouth_psnr", candidate["mouth_psnr"], baseline["mouth_psnr"],
                          psnr_limit, candidate["mouth_psnr"] >= psnr_limit)]
    evidence: list[str] = []
    passed = True
    if "mouth_open_corr" in candidate:
        corr = candidate["mouth_open_corr"]
        ok = corr >= gates.min_mouth_open_corr
        evidence.append(f"mouth_open_corr {corr:.3g} (needs >= {gates.min_mouth_open_corr:.3g})"
                        f" {'ok' if ok else 'FAILED'}")
        passed &= ok
    if "lse_c" in candidate and "lse_c" in baseline:
        needed = baseline["lse_c"] + gates.min_sync_confidence_gain
        ok = candidate["lse_c"] > needed
        evidence.append(f"lse_c {candidate['lse_c']:.3g} vs paste_reference "
                        f"{baseline['lse_c']:.3g} (needs > {needed:.3g}) "
                        f"{'ok' if ok else 'FAILED'}")
        passed &= ok
    if not evidence:
        evidence.append("neither a lip reader nor a sync expert measured it: no evidence that "
                        "the mouth follows the audio")
        passed = False
    results.append(GateResult("floor_audio", None, None, None, passed,
                              note="; ".join(evidence)))
    return results


def check_gates(
    candidate: dict[str, float],
    holder: dict[str, float] | None,
    gates: GateConfig,
    baseline: dict[str, float] | None = None,
) -> list[GateResult]:
    """One result per gate (see the module docstring); ``baseline`` is ``paste_reference``'s
    metrics from the same evaluation run."""
    floor = floor_gates(candidate, baseline, gates)
    if holder is None:
        return [*floor, GateResult("holder", None, None, None, True, note="no current holder")]
    results = [
        *floor,
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
