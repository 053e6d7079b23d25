"""Offline preparation: raw image sets in their real layouts -> a store.

sources.py finds the images of each layout (folders, tars, devkits, CSV labels, CIFAR batches);
decode.py turns one encoded image into the stored S x S x 3 array; imagestats.py accumulates the mean image
and colour statistics; writer.py writes a store, resumably and in parallel; resolve.py turns a user's data
argument into a store (preparing a folder once); synthetic.py generates the demo's image folder.
Training never imports this package: commands resolve the data first.
"""
