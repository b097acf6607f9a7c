"""Command-line tools around the packages: dataset generation, benchmarks, evaluation, checks (``python -m scripts.<tool>``)."""
