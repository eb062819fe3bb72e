"""Operating points: the threshold each decision is taken at, and where it comes from.

Verification (1:1) and identification (1:N) need different points: a search against N enrolled faces makes N
comparisons, so its chance of a false accept is about N times the per-comparison FAR, and the best-accuracy
threshold that suits 1:1 checks lets a large gallery answer with strangers. Each job resolves, in order: its own
explicit threshold, its target FAR (looked up in the model card's operating points), the shared `threshold`, then
a default: the card's best-accuracy threshold for verification, the card's lowest-FAR point for identification
(falling back to the verification threshold, with a warning, for cards that record none).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

from facenas.export.card import ModelCard
from facenas.serve.errors import StartupError
from facenas.serve.settings import ServeSettings

log = logging.getLogger("facenas.serve")


@dataclass(frozen=True)
class Decision:
    """A cosine threshold, where it came from (said in every answer), and the FAR it was chosen for, if any."""

    threshold: float
    source: str
    far: Optional[float] = None


def _at_far(card: Optional[ModelCard], far: float, job: str) -> Decision:
    if card is None:
        raise StartupError(f"{job}_far needs a model card with operating points; this model has no card: give "
                           f"--{job}-threshold instead")
    point = card.operating_point(far)
    if point is None:
        known = ", ".join(f"{p.target_far:g}" for p in card.operating_points) or "none"
        negatives = card.threshold.pairs if card.threshold else 0
        raise StartupError(f"the model card has no operating point at FAR {far:g} (it records: {known}); its "
                           f"calibration set (of {negatives} pairs) cannot show that rate. Choose a recorded FAR, "
                           f"export with a larger calibration set, or give --{job}-threshold")
    where = card.threshold.chosen_on if card.threshold else "its calibration pairs"
    return Decision(point.cosine, f"model card: FAR {far:g} on {where} ({point.negatives} mismatched pairs)", far)


def _best_accuracy(card: Optional[ModelCard]) -> Optional[Decision]:
    if card is None or card.threshold is None:
        return None
    return Decision(card.threshold.cosine, f"model card: best accuracy on {card.threshold.chosen_on}")


def resolve_decisions(settings: ServeSettings, card: Optional[ModelCard]) -> tuple[Decision, Decision]:
    """(verification, identification) decisions, or a StartupError saying what to set."""

    def explicit(job: str) -> Optional[Decision]:
        own, far = getattr(settings, f"{job}_threshold"), getattr(settings, f"{job}_far")
        if own is not None:
            return Decision(own, f"service setting ({job}_threshold)")
        if far is not None:
            return _at_far(card, far, job)
        if settings.threshold is not None:
            return Decision(settings.threshold, "service setting (threshold)")
        return None

    verify = explicit("verify") or _best_accuracy(card)
    if verify is None:
        raise StartupError(f"{settings.model} has no model card with a threshold; start the service with "
                           "--threshold (a cosine similarity), or --verify-threshold and --identify-threshold")
    identify = explicit("identify")
    if identify is None:
        strictest = min(card.operating_points, key=lambda p: p.target_far) if card and card.operating_points else None
        if strictest is not None:
            identify = _at_far(card, strictest.target_far, "identify")
        else:
            log.warning("the model card records no operating point at a target FAR: identification uses the "
                        "verification threshold, and its false accepts grow with the gallery; set --identify-far "
                        "or --identify-threshold")
            identify = Decision(verify.threshold, verify.source + " (no FAR point on the card)", verify.far)
    return verify, identify
