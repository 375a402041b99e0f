"""The paper's logit-space theory as running code: the toy simulator and numerical theorem checks."""

from .checks import run_all
from .toy import ToyConfig, simulate

__all__ = ["ToyConfig", "run_all", "simulate"]
