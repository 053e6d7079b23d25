"""Counting idle cores for `train.threads=-1`: the arithmetic on hand-made /proc/stat samples, and a live
reading on this machine."""

from __future__ import annotations

import os

import pytest

from alexnet.config import build_config
from alexnet.errors import UserError
from alexnet.runtime import compute_threads, cpu_times, idle_cores, idle_cores_between


def test_idle_cores_from_two_samples_hand_computed():
    # 2 cores over 200 jiffies of CPU time in all: 150 idle -> 1.5 cores idle on average
    assert idle_cores_between((1000, 5000), (1150, 5200), cores=2) == pytest.approx(1.5)
    # fully busy and fully idle
    assert idle_cores_between((10, 100), (10, 300), cores=4) == 0.0
    assert idle_cores_between((10, 100), (210, 300), cores=4) == pytest.approx(4.0)
    # no time passed: count every core
    assert idle_cores_between((10, 100), (10, 100), cores=3) == 3.0


def test_cpu_times_read_this_machine_and_grow():
    first = cpu_times()
    assert first is not None  # Linux
    idle, total = first
    assert 0 <= idle <= total
    later = cpu_times()
    assert later[1] >= total and later[0] >= idle


def test_idle_cores_and_thread_settings():
    n = idle_cores(window=0.1)
    assert 1 <= n <= os.cpu_count()
    assert compute_threads(0) == 0 and compute_threads(3) == 3
    assert 1 <= compute_threads(-1) <= os.cpu_count()


def test_threads_below_minus_one_are_refused():
    with pytest.raises(UserError, match="train.threads must be"):
        build_config("cifar", overrides={"train.threads": -2})
