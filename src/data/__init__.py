"""Data loading and bundled datasets."""
