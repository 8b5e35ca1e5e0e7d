"""Runnable examples (need the ``torch`` extra)."""
