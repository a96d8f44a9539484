"""Evaluation metrics (FID, KID, precision/recall, IS) computed offline; see metric_main.py."""
