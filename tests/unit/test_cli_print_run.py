"""The CLI's per-metric tables: skipped vs failed rows, and (model) rows with keys of their own."""

import io

from deepscope.cli import print_run
from deepscope.results import Run
from deepscope.v1 import introspection_pb2 as pb
from deepscope_server import convert


def _result(metric, layer, status="ok", error="", **values):
    r = pb.MetricResult(metric=metric, layer=layer, status=status, error=error)
    r.items.extend(convert.result_items(values))
    return r


def test_print_run_marks_statuses_and_shows_model_rows():
    results = [
        _result("fractal.spectrum_exponent", "fc1", gamma=1.39, ks=0.08),
        _result("fractal.spectrum_exponent", "fc2", "skipped", "graph too small for a scaling fit", gamma=float("nan")),
        _result("fractal.spectrum_exponent", "fc3", "failed", "'gamma' is nan and the metric gave no reason"),
        _result("fractal.spectrum_exponent", "", sigma_gamma=0.25, n_layers=2),
    ]
    run = Run(
        pb.RunInfo(id="r1", num_results=4, num_failed=1),
        results,
        summary_keys={"fractal.spectrum_exponent": ["gamma", "ks"]},
    )
    out = io.StringIO()
    print_run(run, out)
    text = out.getvalue()
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith(("fc", "(model)"))}
    assert "1 failed, 1 skipped" in text
    assert "skipped: graph too small for a scaling fit" in lines["fc2"]
    assert "FAILED: 'gamma' is nan" in lines["fc3"]
    assert "sigma_gamma=0.25" in lines["(model)"] and "n_layers" not in lines["(model)"]
    assert "1.39" in lines["fc1"] and "sigma_gamma" not in lines["fc1"]
