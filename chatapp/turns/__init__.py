"""Turns: start, produce, read and supervise; no Flask in here."""
