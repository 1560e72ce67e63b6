"""Confirmation runs at the target width, and the verdict on a prediction."""
