"""logits-SAM and full SAM (docs/design.md §4).

``common`` what every engine shares (ρ checks, ε's scale, block sizes, metrics); ``logits`` the math on
given logits (gram / weight / chunked); ``costs`` the cost model; ``full`` vanilla SAM (the baseline).
The same perturbation inside the fused head's sweep lives in :mod:`logitsam.fused`, one floor up.
The public names are re-exported here: ``from logitsam.sam import logits_sam_loss, perturb``.
"""

from logitsam.sam.common import METHODS, check_rho, eps_scale, sam_metrics
from logitsam.sam.costs import Cost, method_costs
from logitsam.sam.logits import (
    Perturbed,
    SamOutput,
    choose_method,
    logits_sam_loss,
    perturb,
    perturbed_logits,
)

__all__ = [
    "METHODS",
    "Cost",
    "Perturbed",
    "SamOutput",
    "check_rho",
    "choose_method",
    "eps_scale",
    "logits_sam_loss",
    "method_costs",
    "perturb",
    "perturbed_logits",
    "sam_metrics",
]
