"""One place that decides whether a metric's per-layer result is ``ok``, ``skipped`` or ``failed``.

Why central: metrics report degenerate cases in their own words (a NaN headline plus a
``reason`` such as "graph too small for a scaling fit"); left to each metric, NaN kept showing
up as "ok". The rules, applied to the dict a metric's ``finish()`` returns for one layer:

* an explicit ``"status"`` key (``"skipped"`` or ``"failed"``, with ``"reason"``) wins;
* the headline is the first of the metric's summary keys present in the dict: finite -> ``ok``;
  NaN/inf or not a number -> ``skipped`` with the metric's ``reason``, or ``failed`` without one;
* a dict with none of the summary keys (a metric without any, or a whole-model row with keys
  of its own) is ``skipped`` when it gives a reason and no finite scalar, else ``ok``;
* an ``ok`` result carries the ``reason`` (if any), a ``"warning"`` key, and NaN secondary
  summary values as warnings, so nothing degenerate goes unmentioned.

``"status"`` and ``"warning"`` are instructions, not values: they are removed from the items.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Real
from typing import Any

import numpy as np

STATUSES = ("ok", "skipped", "failed")


@dataclass
class Verdict:
    status: str
    error: str = ""
    warnings: list[str] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)  #: the items to store (instructions removed)


def _scalar(value: Any) -> float | None:
    """The value as a float when it is a plain number (not bool, not an array), else None."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (Real, np.number)) and not isinstance(value, np.ndarray):
        return float(value)
    if isinstance(value, np.ndarray) and value.ndim == 0 and np.issubdtype(value.dtype, np.number):
        return float(value)
    return None


def judge(values: Mapping[str, Any], summary_keys: Sequence[str]) -> Verdict:
    """Status, error and extra warnings of one layer's result dict (see the module docstring)."""
    items = dict(values)
    explicit = items.pop("status", None)
    extra = items.pop("warning", None)
    reason = items.get("reason")
    reason = reason.strip() if isinstance(reason, str) else ""
    warnings = [extra] if isinstance(extra, str) and extra else []
    if explicit is not None:
        if explicit not in STATUSES:
            return Verdict("failed", f"malformed result: status must be one of {', '.join(STATUSES)}, got {explicit!r}")
        if explicit != "ok":
            return Verdict(explicit, reason or f"the metric reported '{explicit}' without a reason", warnings, items)
    scalars = {k: _scalar(v) for k, v in items.items()}
    declared = [k for k in summary_keys if scalars.get(k) is not None]
    present = [k for k in summary_keys if k in items]  # a whole-model row may have keys of its own
    if present:
        head = present[0]
        value = scalars.get(head)
        if value is None or not math.isfinite(value):
            what = f"'{head}' is {'missing' if value is None else value}"
            if reason:
                return Verdict("skipped", reason, warnings, items)
            return Verdict("failed", f"{what} and the metric gave no reason", warnings, items)
    elif reason and not any(v is not None and math.isfinite(v) for v in scalars.values()):
        return Verdict("skipped", reason, warnings, items)
    if reason:
        warnings.append(reason)
    bad = [k for k in declared[1:] if not math.isfinite(scalars[k])]
    if bad and not reason:
        warnings.append(f"{', '.join(bad)} not finite")
    return Verdict("ok", "", warnings, items)
