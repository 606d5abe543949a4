"""Per-layer bit widths: a sensitivity report for accuracy and explanations, and mixed precision.

``sensitivity(run)`` quantizes one layer at a time and measures accuracy drop and explanation
drift; ``choose_bits`` picks the bit width per layer of least measured cost within a size
budget, and ``mixed_precision_recipe`` writes it as a recipe's ``quant.overrides``.
"""

from qsgt_plugin.precision.hessian import effective_weights, hawq_score, hessian_traces
from qsgt_plugin.precision.layer_sensitivity import sensitivity
from qsgt_plugin.precision.mixed import Choice, choose_bits, mixed_precision_recipe, unit_costs
from qsgt_plugin.precision.units import Unit, layer_units, unit_overrides, variant

__all__ = [
    "Choice",
    "Unit",
    "choose_bits",
    "effective_weights",
    "hawq_score",
    "hessian_traces",
    "layer_units",
    "mixed_precision_recipe",
    "sensitivity",
    "unit_costs",
    "unit_overrides",
    "variant",
]
