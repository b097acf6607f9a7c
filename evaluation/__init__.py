"""Evaluations of trained models and of the dataset, and the report (``python -m evaluation``; see evaluation.common)."""
