"""The paper's logit-space theory as running code: the toy simulator and numerical theorem checks."""

from logitsam.theory.checks import run_all
from logitsam.theory.toy import ToyConfig, simulate

__all__ = ["ToyConfig", "run_all", "simulate"]
