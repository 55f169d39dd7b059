"""Tests of the PINN math layer (phasetrain.plugins.pinn)."""
