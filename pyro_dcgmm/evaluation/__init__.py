"""Evaluation: clustering and outlier metrics, sample quality."""
