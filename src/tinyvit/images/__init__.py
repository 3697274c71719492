"""Images: how a weight's evaluation preprocessed them (``spec.py``, plain data), which inputs are
images (``inputs.py``), decoding (``decode.py``) and the transforms that make tensors (``transforms.py``)."""
