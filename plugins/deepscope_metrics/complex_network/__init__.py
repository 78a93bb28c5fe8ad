"""Complex-network metrics of the weight graph (La Malfa et al.): pure functions, no server needed.

- ``strength``: node in/out/total strengths of dense and (unrolled) conv layers, layer fluctuation
- ``distributions``: link-weight summaries, KDE curves, Jensen–Shannon and Jeffreys divergences
- ``binned_kde``: scipy's Gaussian KDE evaluated per bin, so millions of weights stay cheap
- ``unroll``: a layer's unrolled sparse weight matrix and networkx weight graph
- ``walk``: strengths of a neuron layer inside a ModelGraph (next weighted layer, extensions)
- ``input_dependent``: input-dependent neuron strength / activation distributions (reconstructed)
"""

from .distributions import (
    DegenerateDistribution,
    OverBudget,
    divergence,
    divergence_matrix,
    flat_links,
    histogram,
    jeffreys_divergence,
    js_divergence,
    kde_curve,
    link_weight_summary,
    link_weights,
    summary,
)
from .geometry import ConvGeometry, conv_geometry, conv_output_hw
from .input_dependent import (
    NeuronStrengthStream,
    StreamingDistribution,
    activation_function,
    neuron_strength_conv,
    neuron_strength_dense,
)
from .strength import (
    Strengths,
    combine,
    conv_in_strength,
    conv_out_strength,
    dense_in_strength,
    dense_out_strength,
    dense_strengths,
    fold_batchnorm,
    layer_fluctuation,
)
from .unroll import conv_unrolled_matrix, layer_matrix, weight_graph
from .walk import NeuronLayer, input_neuron_strengths, neuron_layer_strengths

__all__ = [
    "ConvGeometry",
    "DegenerateDistribution",
    "NeuronLayer",
    "NeuronStrengthStream",
    "OverBudget",
    "StreamingDistribution",
    "Strengths",
    "activation_function",
    "combine",
    "conv_geometry",
    "conv_in_strength",
    "conv_out_strength",
    "conv_output_hw",
    "conv_unrolled_matrix",
    "dense_in_strength",
    "dense_out_strength",
    "dense_strengths",
    "divergence",
    "divergence_matrix",
    "flat_links",
    "fold_batchnorm",
    "histogram",
    "input_neuron_strengths",
    "jeffreys_divergence",
    "js_divergence",
    "kde_curve",
    "layer_fluctuation",
    "layer_matrix",
    "link_weight_summary",
    "link_weights",
    "neuron_layer_strengths",
    "neuron_strength_conv",
    "neuron_strength_dense",
    "summary",
    "weight_graph",
]
