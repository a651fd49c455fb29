"""pygds.fsinfo: mount lookup, file-system type, GDS support, O_DIRECT and free space."""
from __future__ import annotations

import os

import pytest

from pygds import fsinfo
from pygds.fsinfo import Mount

MOUNTINFO = b"""\
22 1 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
30 27 259:1 / /mnt/a rw,noatime shared:5 master:2 - xfs /dev/nvme0n1 rw,attr2
31 27 259:2 / /mnt/ab rw - ext4 /dev/nvme1n1 rw,data=journal
32 27 0:40 / /mnt/my\\040cache rw - nfs4 server:/export\\040dir rw,vers=4.2,proto=rdma
33 27 0:41 /sub /mnt/stacked rw - tmpfs tmpfs rw
34 27 0:42 / /mnt/stacked rw - wekafs weka0 rw
35 27 0:43 / /var/lib/docker/overlay2/x/merged rw - overlay overlay rw,lowerdir=/l
"""

PROC_MOUNTS = b"""\
/dev/vda / ext4 rw,relatime 0 0
tmpfs /dev/shm tmpfs rw 0 0
server:/e\\134x /mnt/back\\134slash nfs rw,proto=tcp 0 0
"""


@pytest.fixture
def mounts() -> list[Mount]:
    return fsinfo.parse_mount_table(MOUNTINFO)


def test_mountinfo_fields_and_escapes_are_decoded(mounts):
    by_point = {m.mount_point: m for m in mounts}
    nfs = by_point["/mnt/my cache"]
    assert nfs.fs_type == "nfs4" and nfs.source == "server:/export dir" and nfs.device == "0:40"
    assert nfs.option("proto") == "rdma" and nfs.option("vers") == "4.2" and nfs.option("rw") == ""
    assert nfs.option("absent") is None
    xfs = by_point["/mnt/a"]
    assert xfs.fs_type == "xfs" and xfs.source == "/dev/nvme0n1" and "noatime" in xfs.options
    assert xfs.is_block_device and not nfs.is_block_device
    assert by_point["/var/lib/docker/overlay2/x/merged"].fs_type == "overlay"


def test_proc_mounts_format_is_read_too():
    mounts = fsinfo.parse_mount_table(PROC_MOUNTS)
    assert [m.fs_type for m in mounts] == ["ext4", "tmpfs", "nfs"]
    assert mounts[2].mount_point == "/mnt/back\\slash" and mounts[2].source == "server:/e\\x"
    assert mounts[0].device is None and mounts[0].is_block_device and not mounts[1].is_block_device


@pytest.mark.parametrize("path, point", [
    ("/mnt/a", "/mnt/a"),
    ("/mnt/a/cache/x", "/mnt/a"),
    ("/mnt/ab/cache", "/mnt/ab"),      # not /mnt/a: the match is on a path boundary
    ("/mnt/abc/cache", "/"),           # neither /mnt/a nor /mnt/ab
    ("/mnt/my cache/kv", "/mnt/my cache"),
    ("/mnt/stacked/x", "/mnt/stacked"),
    ("/etc/hosts", "/"),
])
def test_mount_of_matches_on_path_boundaries(mounts, path, point):
    assert fsinfo.mount_of(path, mounts).mount_point == point


def test_the_last_of_stacked_mounts_wins(mounts):
    assert fsinfo.fs_type("/mnt/stacked/x", mounts) == "wekafs"


def test_symlinks_are_resolved_before_matching(tmp_path):
    target = tmp_path / "my cache"
    (target / "kv").mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(target)
    table = fsinfo.parse_mount_table(
        b"1 0 8:1 / / rw - ext4 /dev/sda1 rw\n"
        b"2 1 0:50 / " + os.fsencode(str(target)).replace(b" ", b"\\040") + b" rw - lustre mds@o2ib:/fs rw\n")
    assert fsinfo.fs_type(link / "kv", table) == "lustre"
    assert fsinfo.fs_type(link / "not-yet" / "deeper", table) == "lustre"
    assert fsinfo.fs_type(tmp_path, table) == "ext4"


def test_relative_paths_use_the_working_directory(tmp_path, monkeypatch, mounts):
    monkeypatch.chdir(tmp_path)
    table = [Mount("/", "ext4", "/dev/sda1"), Mount(str(tmp_path), "beegfs", "beegfs_nodev")]
    assert fsinfo.fs_type("cache/dir", table) == "beegfs"
    assert fsinfo.fs_type("..", table) == "ext4"


@pytest.mark.skipif(fsinfo.fs_type("/dev/shm") != "tmpfs", reason="/dev/shm is not a tmpfs here")
def test_real_mount_table_through_a_symlink(tmp_path):
    link = tmp_path / "shm-link"
    link.symlink_to("/dev/shm")
    assert fsinfo.fs_type(link) == "tmpfs"
    assert fsinfo.mount_of(link / "new" / "dir").mount_point == "/dev/shm"


def test_real_mount_agrees_with_the_kernels_device_number(tmp_path):
    mount = fsinfo.mount_of(tmp_path)
    if mount.device is None or mount.fs_type == "btrfs":
        pytest.skip(f"{mount.fs_type} via /proc/mounts: no comparable device number")
    st = os.stat(tmp_path)
    assert mount.device == f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"


def test_no_mount_holding_the_path_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="no mount"):
        fsinfo.mount_of("/data/x", [Mount("/mnt", "ext4", "/dev/sda")])


def test_unreadable_mount_table_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot read the mount table"):
        fsinfo.read_mounts(str(tmp_path / "absent"))


@pytest.mark.parametrize("point, supported, words", [
    ("/mnt/a", True, "block"),                 # xfs
    ("/mnt/ab", False, "data=journal"),       # ext4 data=journal
    ("/mnt/my cache", True, "RDMA"),          # nfs4 over rdma
    ("/mnt/stacked", True, "WekaFS"),
    ("/var/lib/docker/overlay2/x/merged", False, "overlay"),
    ("/proc", False, "proc is not among"),
])
def test_gds_support_follows_cufiles_list(mounts, point, supported, words):
    ok, note = fsinfo.gds_support(fsinfo.mount_of(point, mounts))
    assert ok is supported and words in note


def test_nfs_over_tcp_is_not_gds():
    ok, note = fsinfo.gds_support(fsinfo.parse_mount_table(PROC_MOUNTS)[2])
    assert not ok and "proto=rdma" in note


def test_tmpfs_note_says_the_plugin_uses_posix():
    ok, note = fsinfo.gds_support(Mount("/dev/shm", "tmpfs", "tmpfs"))
    assert not ok and "POSIX" in note


def test_o_direct_probe_on_a_real_directory(tmp_path):
    ok, detail = fsinfo.probe_o_direct(str(tmp_path))
    expected = fsinfo.fs_type(tmp_path) in ("ext4", "xfs", "btrfs", "tmpfs")
    assert ok is True or not expected, detail
    assert os.listdir(tmp_path) == []  # the probe file is gone


def test_o_direct_probe_in_a_missing_directory_says_untested(tmp_path):
    ok, detail = fsinfo.probe_o_direct(str(tmp_path / "absent"))
    assert ok is None and "not tested" in detail


def test_probe_path_of_a_path_that_does_not_exist_yet(tmp_path):
    facts = fsinfo.probe_path(tmp_path / "cache" / "a")
    assert not facts.exists and facts.probed_at == str(tmp_path)
    assert facts.resolved == os.path.join(os.path.realpath(tmp_path), "cache", "a")
    assert facts.fs_type == fsinfo.fs_type(tmp_path) and facts.free_bytes > 0 and facts.total_bytes >= facts.free_bytes
    assert facts.as_dict()["gds_supported"] is facts.gds_supported
    assert not (tmp_path / "cache").exists()


def test_probe_path_without_o_direct_test(tmp_path):
    facts = fsinfo.probe_path(tmp_path, test_o_direct=False)
    assert facts.exists and facts.o_direct is None and facts.o_direct_detail == "not tested"


@pytest.mark.parametrize("kind", fsinfo.NO_GDS_FILE_SYSTEMS)
def test_file_systems_without_gpu_direct_say_so_and_why(kind):
    """The one list of file systems where GPU-direct I/O cannot work (the plugin's engine plan
    reads it too): none is GDS-capable, and each has its own note."""
    ok, note = fsinfo.gds_support(Mount("/m", kind, "none"))
    assert not ok and note.startswith(kind) and "compatibility mode" not in note.split(":")[0]
    assert kind not in fsinfo.GDS_FILE_SYSTEMS
