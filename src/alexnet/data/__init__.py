"""What training reads: store.py (a prepared store), loader.py (batches of uint8 on the device),
augment.py (crops, flips, colour noise on the device), cutviews.py (evaluation views), buffers.py (pinned
batch buffers), classnames.py (class name tables)."""
