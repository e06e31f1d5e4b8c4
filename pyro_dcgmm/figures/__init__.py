"""Figures: training curves, component views."""
