"""The explanation suite's result as typed records, and their JSON form.

:func:`~qsgt_plugin.attribution.suite.explanation_suite` returns a :class:`SuiteResult`; the
report reads its fields by name (``suite.deletion_insertion.accuracy.saliency``) and writes
``to_json()`` into ``metrics.json``, which ``SuiteResult.from_json`` reads back to the same record.
A JSON object with a field missing or one more is refused with the field's path, so a
``metrics.json`` of another version is never half-read.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = [
    "ByCurve",
    "DeletionInsertionResult",
    "MprtResult",
    "Ranked",
    "RoadOrders",
    "RoadResult",
    "SuiteResult",
]

T = TypeVar("T", bound="_Record")


class _Record:
    """``to_json`` / ``from_json`` for a dataclass whose fields are records or JSON values."""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls: type[T], data: dict[str, Any], path: str = "") -> T:
        if not isinstance(data, dict):
            raise ValueError(f"{path or cls.__name__}: expected an object, got {data!r:.60}")
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in data]
        extra = [k for k in data if k not in names]
        if missing or extra:
            where = path or cls.__name__
            raise ValueError(
                f"{where}: not a {cls.__name__}"
                + (f"; missing {', '.join(missing)}" if missing else "")
                + (f"; unknown {', '.join(extra)}" if extra else "")
            )
        values = {}
        for name in names:
            hint = hints[name]
            inner = f"{path}.{name}" if path else name
            is_record = isinstance(hint, type) and issubclass(hint, _Record)
            values[name] = hint.from_json(data[name], inner) if is_record else data[name]
        return cls(**values)


@dataclass(frozen=True)
class Ranked(_Record):
    """One read-out with pixels ranked by saliency and, as the control, at random: a curve
    (one value per fraction of pixels) or an area."""

    saliency: Any
    random: Any


@dataclass(frozen=True)
class ByCurve(_Record):
    """The deletion and the insertion read-out."""

    deletion: Ranked
    insertion: Ranked


@dataclass(frozen=True)
class DeletionInsertionResult(_Record):
    """Deletion / insertion (RISE) in percent of the predicted class's probability; the
    deletion pass's accuracy is the masking curve (the study's Figure 3)."""

    fractions: list[float]
    images: int
    accuracy: Ranked
    deletion: Ranked
    insertion: Ranked
    normalised: ByCurve
    """Each image's curve divided by its clean probability."""
    auc: ByCurve
    auc_normalised: ByCurve


@dataclass(frozen=True)
class RoadOrders(_Record):
    """ROAD's removal orders: most relevant first, least relevant first, random."""

    morf: Any
    lerf: Any
    random: Any


@dataclass(frozen=True)
class RoadResult(_Record):
    """ROAD (noisy linear imputation): accuracy by removal fraction, and its areas."""

    fractions: list[float]
    images: int
    morf: list[float]
    lerf: list[float]
    random: list[float]
    auc: RoadOrders
    auc_normalised: RoadOrders


@dataclass(frozen=True)
class MprtResult(_Record):
    """Cascading randomisation: rank similarity to the original maps, layer by layer."""

    layers: list[str]
    similarity: list[float]


@dataclass(frozen=True)
class SuiteResult(_Record):
    """Every metric of the suite for one model on one set of images."""

    method: str
    images: int
    deletion_insertion: DeletionInsertionResult
    road: RoadResult
    mprt: MprtResult
    per_image: dict[str, list[float]]
    """Each summary number image by image (the report's bootstrap over images)."""
    random_logit: float
    gini: float
    entropy: float
    tied_fraction: float
    sensitivity_max: float
    seconds: dict[str, float]
    """Time each metric took."""
