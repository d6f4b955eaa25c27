"""Closed-form MSE, variance and bounds (in progress: issue 4)."""
