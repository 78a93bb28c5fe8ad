"""The central ok/skipped/failed rules (server/deepscope_server/result_status.py)."""

import math

import numpy as np

from deepscope_server.result_status import judge


def test_finite_headline_is_ok_and_reason_becomes_a_warning() -> None:
    v = judge({"d_B": 1.7, "r2": 0.99, "reason": "3 of 4 sizes used"}, ("d_B", "r2"))
    assert (v.status, v.error) == ("ok", "")
    assert v.warnings == ["3 of 4 sizes used"]


def test_nan_headline_with_reason_is_skipped_with_that_reason() -> None:
    v = judge({"d_B": math.nan, "reason": "graph too small for a scaling fit"}, ("d_B", "r2"))
    assert v.status == "skipped" and v.error == "graph too small for a scaling fit"
    assert v.values["reason"] == "graph too small for a scaling fit"  # values are kept for the curious


def test_nan_headline_without_reason_fails_naming_the_key() -> None:
    v = judge({"d_B": np.float32("nan")}, ("d_B",))
    assert v.status == "failed" and "'d_B'" in v.error and "no reason" in v.error


def test_rows_without_summary_keys_are_judged_by_their_scalars() -> None:
    # a whole-model row with keys of its own (e.g. sigma over layers) is judged by its scalars
    assert judge({"sigma_gamma": 0.3}, ("gamma",)).status == "ok"
    assert judge({"sigma_gamma": math.nan, "reason": "1 layer"}, ("gamma",)).status == "skipped"
    assert judge({"reason": "capped"}, ("n_nodes",)).status == "skipped"
    assert judge({"d_B": "n/a"}, ("d_B",)).status == "failed"


def test_explicit_status_wins_and_is_removed_from_values() -> None:
    v = judge({"n_nodes": 0, "status": "skipped", "reason": "capped: 3 > max_links 2"}, ("n_nodes",))
    assert (v.status, v.error) == ("skipped", "capped: 3 > max_links 2")
    assert "status" not in v.values
    assert judge({"x": 1.0, "status": "done"}, ("x",)).status == "failed"


def test_secondary_nan_and_warning_key_are_warnings() -> None:
    v = judge({"fvu": 0.2, "fvu_train": math.nan, "warning": "48 rows for 64 dims"}, ("fvu", "fvu_train"))
    assert v.status == "ok"
    assert v.warnings == ["48 rows for 64 dims", "fvu_train not finite"]
    assert "warning" not in v.values


def test_metric_without_summary_keys() -> None:
    assert judge({"a": math.nan, "reason": "no samples"}, ()).status == "skipped"
    assert judge({"a": 2.0}, ()).status == "ok"
    assert judge({"a": np.arange(3)}, ()).status == "ok"


def test_capped_weight_graph_is_skipped_saying_how_not_ok_with_zero_nodes() -> None:
    from deepscope_metrics.plugins.cnt import WeightGraph
    from deepscope_server.model_graph import Layer
    from deepscope_server.testing import run_metric

    fc = Layer("fc", "linear", "Gemm", weights={"weight": np.ones((3, 4)), "bias": np.zeros(3)})
    res = run_metric(WeightGraph, [fc], params={"max_links": 5})["fc"]
    v = judge(res, WeightGraph.summary_keys)
    assert v.status == "skipped" and "capped" in v.error and "12 links > max_links 5" in v.error
    assert "raise the max_links parameter" in v.error and "n_nodes" not in v.values
    assert judge(run_metric(WeightGraph, [fc])["fc"], WeightGraph.summary_keys).status == "ok"
