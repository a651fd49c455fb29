"""`summed_io`'s choice of whether to spread checksummed transfers over pygds's pool: the CPUs a
process may use, capped by a container's CPU quota as the kernel's cgroup files show it. (Its
transfers are tested through the store, in test_store_integrity.py.)"""

from __future__ import annotations

import os

import pytest

from lmcache_plugin.summed_io import spare_cores, usable_cpus

AFFINITY = len(os.sched_getaffinity(0))


def limits(tmp_path, v2=None, v1_quota=None, v1_period=None):
    """The three cgroup files as `usable_cpus` reads them; a file left None does not exist."""
    paths = []
    for name, text in (("cpu.max", v2), ("cpu.cfs_quota_us", v1_quota), ("cpu.cfs_period_us", v1_period)):
        path = tmp_path / name
        if text is not None:
            path.write_text(text + "\n")
        paths.append(str(path))
    return tuple(paths)


@pytest.mark.parametrize("files,expected", [
    ({}, AFFINITY),  # no cgroup files: the affinity
    ({"v2": "max 100000"}, AFFINITY),  # no quota
    ({"v2": "50000 100000"}, 1),  # half a CPU: one
    ({"v2": "100000000 100000"}, AFFINITY),  # a quota above the affinity: the affinity
    ({"v1_quota": "-1", "v1_period": "100000"}, AFFINITY),  # cgroup v1 without a quota
    ({"v1_quota": "50000", "v1_period": "100000"}, 1),
    ({"v2": "lots 0"}, AFFINITY),  # unreadable: the affinity
    ({"v1_quota": "50000", "v1_period": "0"}, AFFINITY),
], ids=["none", "v2 max", "v2 half", "v2 above", "v1 none", "v1 half", "v2 garbage", "v1 zero period"])
def test_usable_cpus_are_the_affinity_capped_by_a_cgroup_quota(tmp_path, files, expected):
    assert usable_cpus(limits(tmp_path, **files)) == expected


def test_no_spreading_with_an_io_thread_for_every_cpu():
    assert 1 <= usable_cpus() <= AFFINITY
    assert not spare_cores(usable_cpus())
