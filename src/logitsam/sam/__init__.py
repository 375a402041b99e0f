"""logits-SAM and full SAM (docs/design.md §4).

``logits`` holds the math on given logits (gram / weight / chunked, ρ checks); ``costs`` the one cost model;
``fused`` the same perturbation inside the fused head's sweep; ``full`` vanilla SAM (the baseline).
The public names are re-exported here: ``from logitsam.sam import logits_sam_loss, perturb``.
"""

from logitsam.sam.common import METHODS, check_rho, sam_metrics
from logitsam.sam.costs import Cost, method_costs
from logitsam.sam.logits import (
    Perturbed,
    SamOutput,
    choose_method,
    eps_scale,
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
