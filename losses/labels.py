"""The label conventions every layer shares: a leaf, so the loss files, logprobs.py and
collate_functions.py import it without importing each other (or the loss registry's package
importing its own files in a circle).

    IGNORE_INDEX = -100     the label of a position that is not trained on (prompt, padding,
                            another turn): PyTorch's cross_entropy ignore_index default
"""
IGNORE_INDEX = -100
