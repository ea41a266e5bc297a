"""Scores per the Video-R1 protocol: exact option letter, 2-decimal numbers with the decimal-point
consistency check, MRA for regression, plus normalised exact match for free-form answers."""

from __future__ import annotations

import math
import re

from .extract import _squash, extract_answer, normalize_option, number_text, parse_number

# Tolerances 1 - theta for theta in {0.50, 0.55, ..., 0.95}, written exactly: computing 1 - 0.95
# in floats gives 0.05000000000000004 and would count a relative error of exactly 5 % as a hit.
MRA_TOLERANCES = tuple((50 - 5 * i) / 100 for i in range(10))


def mra(pred: float | None, gt: float) -> float:
    """Mean relative accuracy: the fraction of thresholds theta with |pred - gt| / |gt| < 1 - theta.

    A missing or non-finite prediction scores 0. With gt == 0 the relative error is undefined:
    an exact 0 scores 1, anything else 0.
    """
    if pred is None or not math.isfinite(pred) or not math.isfinite(gt):
        return 0.0
    if gt == 0:
        return 1.0 if pred == 0 else 0.0
    rel = abs(pred - gt) / abs(gt)
    return sum(rel < tol for tol in MRA_TOLERANCES) / len(MRA_TOLERANCES)


def _has_decimal(token: str | None) -> bool:
    if not token:
        return False
    if re.fullmatch(r"[-+]?\d{1,3}(?:,\d{3})+", token):  # thousands separators only
        return False
    return "." in token or "," in token


def metric_of(qtype: str) -> str:
    """ "mra" for regression items, "acc" for the rest (they are averaged separately)."""
    return "mra" if qtype == "regression" else "acc"


def score_output(item: dict, output: str | None) -> dict:
    """Extract and score one model output for a dataset item.

    Returns {"prediction", "extraction", "answered", "score", "metric"}: ``extraction`` is
    "tag", "fallback" (no tags, but the bare output parsed strictly), "unparsed" (text found but
    no valid answer in it) or "empty"; unanswered items score 0.
    """
    qtype = item.get("type", "free-form")
    gt = item.get("answer")
    options = item.get("options") or None
    text, how = extract_answer(output)
    strict = how == "fallback"
    pred, score = None, 0.0
    if text is not None:
        if qtype == "multiple-choice":
            pred = normalize_option(text, options, strict=strict)
            gt_letter = normalize_option(str(gt), options)
            score = float(pred is not None and pred == gt_letter)
        elif qtype in ("numerical", "regression"):
            pred = parse_number(text, strict=strict)
            gt_num = parse_number(str(gt))
            if pred is not None and gt_num is not None:
                if qtype == "regression":
                    score = mra(pred, gt_num)
                else:
                    same_form = _has_decimal(number_text(text)) == _has_decimal(number_text(str(gt)))
                    score = float(same_form and round(pred, 2) == round(gt_num, 2))
        else:
            pred = text if (text and (not strict or len(text) <= 200)) else None
            score = float(pred is not None and _squash(pred) == _squash(str(gt)))
    if text is not None and pred is None:
        how = "unparsed"
    return {
        "prediction": pred,
        "extraction": how,
        "answered": pred is not None,
        "score": score,
        "metric": metric_of(qtype),
    }
