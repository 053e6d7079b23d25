"""Scale: ddp.py (torchrun processes, rank sums, the stop agreement, elastic restarts) and towers.py (the
paper's two towers on two devices)."""
