"""Diagnostics: Hessian traces and squeezing metrics."""
