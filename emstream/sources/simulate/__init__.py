"""Synthetic E-TEM microscope (see scene, training, writers, stream)."""
