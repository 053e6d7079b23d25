"""Run the `alexnet` command with every torch.distributed.all_reduce call counted: a helper that
test_distributed.py starts under torchrun. The real collective still runs; the count of this rank's calls
goes to $COUNT_DIR/rank-R.json when the command ends. (DistributedDataParallel's gradient buckets are reduced
inside its C++ reducer, not through this function, so they are not counted.)"""

import json
import os
import sys
from pathlib import Path

import torch.distributed as dist

calls = 0
real_all_reduce = dist.all_reduce


def counted_all_reduce(*args, **kwargs):
    global calls
    calls += 1
    return real_all_reduce(*args, **kwargs)


dist.all_reduce = counted_all_reduce

from alexnet.cli import main  # noqa: E402 - after the counter is in place

status = main(sys.argv[1:])
Path(os.environ["COUNT_DIR"], f"rank-{os.environ['RANK']}.json").write_text(json.dumps(calls))
sys.exit(status)
