"""The explorer's pages, one module each with its cached library calls beside it (``<page>_data.py``),
and what they share (common.py, data.py)."""
