"""The synthetic dataset's generator (``python -m scripts.make_synthetic_dataset``) and the test media helpers."""
