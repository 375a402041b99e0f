"""The fused output head (docs/design.md §5): log-probs of the scored tokens straight from hidden states
and the head weight, with the loss gradient and logits-SAM in the same row chunks, never an (N, V) tensor.

``head`` the autograd entry (:func:`fused_sequence_sums`), ``sweep`` the row-ordered pass, ``vocab``
``chunked``'s vocabulary-order pass, ``perturbations`` ε's ingredients behind one interface, ``methods``
the table {method: (implementation, cost)}, ``row_plan`` the scored rows in pair order, ``products``
the (rows, V) @ (V, d) products. Below the objective (core/), above sam/'s shared math; nothing here
imports upward.
"""

from logitsam.fused.head import FusedJob, FusedResult, compute_dtype, fused_sequence_sums
from logitsam.fused.methods import FUSED_METHODS, FusedMethod, choose_fused_method, fused_method_costs
from logitsam.fused.perturbations import Perturbation
from logitsam.fused.row_plan import RowPlan, plan_rows
from logitsam.fused.sweep import PairLosses, SweepAux

__all__ = [
    "FUSED_METHODS",
    "FusedJob",
    "FusedMethod",
    "FusedResult",
    "PairLosses",
    "Perturbation",
    "RowPlan",
    "SweepAux",
    "choose_fused_method",
    "compute_dtype",
    "fused_method_costs",
    "fused_sequence_sums",
    "plan_rows",
]
