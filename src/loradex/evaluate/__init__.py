"""Evaluation: metrics.py (per-answer scores with their definitions), stats.py (bootstrap intervals and the
paired comparison of two modes on the same questions)."""
