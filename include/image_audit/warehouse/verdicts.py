"""Verdicts: how a detection result becomes "ai_generated", "partly_ai" or "human".

One rule, written once as a SQL expression, so the counts, the exports and the thumbnails agree:

1. ``ai >= thresholds.ai_generated``                      -> ``ai_generated``
2. ``ai >= thresholds.partly_ai``                         -> ``partly_ai``
3. ``mask_area >= thresholds.min_mask_area`` (when set)   -> ``partly_ai``: a small AI-edited region
   (an inserted object) in an otherwise human picture still makes it partly AI
4. otherwise                                              -> ``human``

``ai`` is ``summary.ai`` of the response; ``mask_area`` is the share of the image's pixels the decoded RLE
mask marks as AI (:func:`mask_area_sql`). Only completed scans get a verdict.

The rule lives in the warehouse package so that both the report (``image_audit.reporting``) and the
analytics model the warehouse keeps (``image_audit.warehouse.analytics``) apply this one definition.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum

from sqlalchemy import ColumnElement, Float, Integer, and_, case, cast, func, literal, literal_column

from image_audit.warehouse.schema import audit_results


class Verdict(StrEnum):
    AI_GENERATED = "ai_generated"
    PARTLY_AI = "partly_ai"
    HUMAN = "human"


VERDICT_LABELS = {
    Verdict.AI_GENERATED: "AI-generated",
    Verdict.PARTLY_AI: "Partly AI",
    Verdict.HUMAN: "Human",
}


@dataclass(frozen=True)
class Thresholds:
    """Verdict thresholds on ``summary.ai`` (and the mask area); see the module docstring."""

    ai_generated: float = 0.9
    partly_ai: float = 0.2
    #: Share of AI pixels in the mask that makes an image ``partly_ai`` even under ``partly_ai``;
    #: ``None`` decides on ``summary.ai`` alone.
    min_mask_area: float | None = 0.05

    def __post_init__(self) -> None:
        if not 0.0 <= self.partly_ai <= self.ai_generated <= 1.0:
            raise ValueError(
                f"thresholds must satisfy 0 <= partly_ai ({self.partly_ai}) <= "
                f"ai_generated ({self.ai_generated}) <= 1"
            )
        if self.min_mask_area is not None and not 0.0 < self.min_mask_area <= 1.0:
            raise ValueError(f"min_mask_area must be in (0, 1] or None, not {self.min_mask_area}")

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> list[str]:
        """The rule in words, for the report."""
        rules = [
            f"AI-generated: summary.ai ≥ {self.ai_generated:g}",
            f"Partly AI: summary.ai ≥ {self.partly_ai:g}"
            + (
                f", or the mask marks ≥ {self.min_mask_area:.0%} of the pixels as AI"
                if self.min_mask_area is not None
                else ""
            ),
            "Human: everything else that completed",
        ]
        return rules


def verdict_of(ai: float, mask_area: float | None, thresholds: Thresholds) -> Verdict:
    """The verdict of one result (the Python twin of :func:`verdict_sql`)."""
    if ai >= thresholds.ai_generated:
        return Verdict.AI_GENERATED
    if ai >= thresholds.partly_ai:
        return Verdict.PARTLY_AI
    minimum = thresholds.min_mask_area
    if minimum is not None and mask_area is not None and mask_area >= minimum:
        return Verdict.PARTLY_AI
    return Verdict.HUMAN


def verdict_sql(
    completed: ColumnElement, ai: ColumnElement, mask_area: ColumnElement, thresholds: Thresholds
) -> ColumnElement:
    """``CASE`` expression giving the verdict of a row (NULL unless ``completed``)."""
    whens = [
        (~completed, literal(None)),
        (ai >= thresholds.ai_generated, literal(Verdict.AI_GENERATED.value)),
        (ai >= thresholds.partly_ai, literal(Verdict.PARTLY_AI.value)),
    ]
    if thresholds.min_mask_area is not None:
        whens.append((mask_area >= thresholds.min_mask_area, literal(Verdict.PARTLY_AI.value)))
    return case(*whens, else_=literal(Verdict.HUMAN.value))


# --- the verdict's inputs, in SQL ---------------------------------------------------------------------


def summed_mask_pixels_sql(dialect: str) -> ColumnElement:
    """Number of AI pixels of ``audit_results.mask_lengths``: the sum of the JSON list, in the database
    (for the results stored without ``mask_pixels``)."""
    if dialect == "postgresql":
        sql = (
            "(SELECT COALESCE(SUM(value::bigint), 0) "
            "FROM json_array_elements_text(audit_results.mask_lengths) AS value)"
        )
    else:
        sql = "(SELECT COALESCE(SUM(value), 0) FROM json_each(audit_results.mask_lengths))"
    return literal_column(sql, type_=Integer)


def mask_pixels_sql(dialect: str) -> ColumnElement:
    """Number of AI pixels of the result's mask: the stored count, else (a result stored before it was)
    the sum of ``mask_lengths``; ``CASE`` evaluates lazily, so only those rows read their mask."""
    result = audit_results.c
    return case((result.mask_pixels.is_not(None), result.mask_pixels), else_=summed_mask_pixels_sql(dialect))


def mask_area_sql(dialect: str) -> ColumnElement:
    """Share of the image's pixels the mask of ``audit_results`` marks as AI (``NULL`` without a result)."""
    result = audit_results.c
    pixels = cast(result.width, Float) * result.height
    return case(
        (and_(result.scan_id.is_not(None), pixels > 0), cast(mask_pixels_sql(dialect), Float) / pixels),
        else_=None,
    )


def utc_day_sql(column, dialect: str) -> ColumnElement:
    """``YYYY-MM-DD`` of a timestamp in UTC (SQLite stores UTC wall time as text): the report's "ingestion
    day" of an image."""
    if dialect == "postgresql":
        return func.to_char(func.timezone("UTC", column), "YYYY-MM-DD")
    return func.substr(column, 1, 10)
