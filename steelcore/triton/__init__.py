"""Triton: the ensemble client of the workers, server/model readiness, and explicit-mode model control."""
