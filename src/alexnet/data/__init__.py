"""Data: raw image sets in their real layouts -> a prepared store -> batches for training.

decode.py turns one encoded image into the stored S x S x 3 array; sources.py finds the images of each
layout; prepare.py writes a store; store.py reads one; resolve.py turns a user's data argument into a store.
"""
