"""Text for CLIP and SigLIP: tokenizers identical, id for id, to the weights' home libraries
(``tokenize.py``), and the data shipped for zero-shot ImageNet (``imagenet_zeroshot.json``).

The tokenizers need the optional extra ``pip install "tinyvit[text]"`` (tokenizers, ftfy, regex,
sentencepiece); nothing here imports them until a text is tokenized. ``bpe_simple_vocab_16e6.txt.gz``
is OpenAI CLIP's BPE vocabulary as open_clip ships it (MIT License, Copyright (c) 2021 OpenAI).
"""
