"""Hybrid predictive training: the hybrid schedule and dynamics models."""
