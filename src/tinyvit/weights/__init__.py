"""Weights: records, the zoo and the names people type (plain data); checkpoint files, key maps and
architectures; conversion; fetching from the Hub and URLs (``_hub.py``); building models (``_builder.py``)."""
