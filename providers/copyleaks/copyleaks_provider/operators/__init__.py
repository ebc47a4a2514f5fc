"""Operators submitting images to Copyleaks."""
