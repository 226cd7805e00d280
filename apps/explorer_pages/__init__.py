"""The explorer's pages, one module each, and what they share (common.py, data.py)."""
