"""The networks, in torch alone: the Vision Transformer (``vit.py``)."""
