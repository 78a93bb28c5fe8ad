"""Plugin adapter: dimension.* metrics (Janik & Witaszczyk 2020), their own entry point.

The numbers come from ``deepscope_metrics.dimension`` over a streamed covariance
(``deepscope_metrics.streaming``); ``reduce`` is shared with the complexity family.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from deepscope_server.plugin_api import (
    Curve,
    Layer,
    Needs,
    Param,
    PerLayerMetric,
    Table,
    hookimpl,
    nan_result,
    unit_view,
)

from ..dimension import DEFAULT_TAUS, spectrum_dimensions
from ..streaming import StreamingCovariance
from .complexity import CITATION, REDUCE, parse_floats


class EffectiveDimension(PerLayerMetric):
    name = "dimension.effective"
    summary_keys = ("d_eff", "participation_ratio", "spectrum_exponent")
    description = (
        "Effective dimension d_eff = exp(-sum p_i ln p_i) over the PCA explained-variance ratios of the "
        "layer's representation (streamed float64 covariance; Gram matrix when units outnumber samples), "
        "plus the participation ratio, components needed per variance fraction tau, and the spectrum's "
        "power-law exponent."
    )
    citation = CITATION
    method = """\
**Faithful.** d_eff = exp(-sum_i p_i ln p_i) with p_i = lambda_i / sum lambda the explained-variance ratios
of the centred representation (eigenvalues of its scatter matrix), as in `iconrnd/crl`
(`common/nets.py`, `dimeff_reg`, which cites the paper: SVD of X^T X after subtracting the column
means, ratios, exp of the entropy with 0 ln 0 = 0). Checked against an independent implementation of
that recipe on random and trained, dense and conv representations
(`tests/unit/test_agreement_complexity_modes.py`). Conv/token maps become `[rows, units]` by
`reduce` (default: channel = unit, averaged over positions; `flatten` = every (channel, position)).
"""
    needs = Needs.OUTPUTS
    result_kinds = ("scalar", "vector", "curve", "table")
    params = (
        REDUCE,
        Param("max_dim", int, 1024, "wider layers are projected to this many dims (reported)", min=1, max=8192),
        Param(
            "projection",
            str,
            "pca",
            "projection for wider layers: top principal directions of the first rows seen, or random",
            choices=("pca", "random"),
        ),
        Param("taus", str, ",".join(map(str, DEFAULT_TAUS)), "variance fractions for the component counts"),
        Param("fit_start", int, 1, "first component index of the spectrum power-law fit", min=1, max=8192),
        Param("fit_stop", int, 0, "last component index of the fit (0 = last non-zero eigenvalue)", min=0, max=8192),
    )

    def start(self) -> None:
        taus = parse_floats(self.params["taus"], "taus")
        if not all(0 < t <= 1 for t in taus):
            raise ValueError(f"parameter 'taus' values must lie in (0, 1], got {taus}")
        self.taus = np.asarray(taus)
        super().start()

    def accumulator(self, layer: Layer) -> StreamingCovariance:
        return StreamingCovariance(self.params["max_dim"], self.params["projection"], self.ctx.seed)

    def rows(self, layer: Layer, a: np.ndarray) -> np.ndarray:
        return unit_view(a, layer, self.params["reduce"])

    @classmethod
    def mergeable(cls, params, layers) -> bool:
        """Exact unless a layer wider than max_dim is PCA-projected (each part would pick its own directions)."""

        def units(layer) -> float:  # the width unit_view gives, inf when unknown
            shape = layer.output_shapes[0][1:] if layer.output_shapes else ()
            if not shape or None in shape:
                return 1 if not shape else float("inf")
            axis = layer.channel_axis - (layer.channel_axis > 0)
            return int(np.prod(shape)) if params["reduce"] == "flatten" else shape[axis]

        return params["projection"] == "random" or all(units(layer) <= params["max_dim"] for layer in layers)

    def merge(self, other: EffectiveDimension) -> None:
        """The streamed covariances merge exactly (StreamingCovariance.merge)."""
        for name, cov in self.acc.items():
            cov.merge(other.acc[name])

    def measure(self, layer: Layer, cov: StreamingCovariance) -> dict[str, Any]:
        p = self.params
        info = cov.info()
        if info["projection"] != "none":
            self.ctx.warn(
                f"{self.name}: {layer.name} has {info['n_features']} units, {info['projection']}-projected "
                f"to {info['dim']} (max_dim); retained variance {info['retained_variance_fraction']:.3f}"
            )
        if cov.n < 2 or not np.isfinite(cov.total_variance()):
            res = nan_result(f"need at least 2 finite samples, got {cov.n}", "d_eff", "participation_ratio")
        else:
            lam = cov.eigenvalues()
            res = spectrum_dimensions(lam, self.taus, p["fit_start"], p["fit_stop"] or None)
            res["n_components"] = Table({"tau": self.taus, "n_components": res["n_components"]})
            res["spectrum"] = Curve(
                np.arange(1, lam.size + 1, dtype=np.float64), lam, "component", "covariance eigenvalue"
            )
        return {**res, **info, "reduce": p["reduce"], "max_dim": p["max_dim"], "seed": int(self.ctx.seed)}


@hookimpl
def deepscope_register_metrics(register) -> None:
    register(EffectiveDimension)
