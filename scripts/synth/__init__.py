"""Helpers of scripts/make_synthetic_dataset.py (imported with scripts/ on sys.path)."""
