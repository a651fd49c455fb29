"""hipFile's documented requirements (`pygds.cli.hipfile_requirements`, shown by `pygds info`): each
topic gets a verdict from files alone, on fake sysfs trees and ROCm installs built here."""
from __future__ import annotations

import os
from pathlib import Path

from pygds import fsinfo, hip
from pygds.cli import hipfile_requirements as req
from test_hip_memory import run_py


def test_requirements_report_every_topic_with_a_verdict(tmp_path: Path) -> None:
    found = req.requirements([str(tmp_path)])
    topics = [r.topic for r in found]
    assert topics == ["libhipfile", "HIP runtime", "HIP runtime AIS", "ROCm", "amdgpu", "kernel P2PDMA",
                      f"path {tmp_path}: file system", f"path {tmp_path}: device", f"path {tmp_path}: O_DIRECT"]
    for r in found:
        assert r.ok in (True, False, None) and r.detail
        assert r.ok is True or r.fix or r.topic == "HIP runtime AIS", r
    facts = fsinfo.probe_path(tmp_path)
    fs = found[6]
    assert fs.ok is (facts.fs_type == "xfs" or (facts.fs_type == "ext4" and
                                               fsinfo.mount_of(tmp_path).option("data") in (None, "ordered")))
    assert fs.detail.startswith(f"{facts.fs_type} at {facts.mount_point}")
    if not hip.check_runtime().ok:
        assert found[2].ok is None and found[1].ok is False


def test_rocm_version_is_read_from_the_install(tmp_path: Path) -> None:
    (tmp_path / ".info").mkdir()
    (tmp_path / ".info" / "version").write_text("7.1.1-38\n")
    assert req._rocm_version({"ROCM_PATH": str(tmp_path)}) == ((7, 1), str(tmp_path / ".info" / "version"))
    (tmp_path / ".info" / "version").write_text("7.2.0-43\n")
    assert req._rocm_version({"ROCM_PATH": str(tmp_path)})[0] >= req.MIN_ROCM


def _block(sys_root: Path, device: str, node: str, **files: str) -> Path:
    """A fake /sys/devices node for `device` ("major:minor"), linked from sys_root/dev/block."""
    path = sys_root / "devices" / node
    path.mkdir(parents=True, exist_ok=True)
    (path / "dev").write_text(device + "\n")
    for name, text in files.items():
        (path / name).write_text(text)
    link = sys_root / "dev" / "block" / device
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(path)
    return path


def test_block_devices_are_classified_local_nvme_or_not(tmp_path: Path) -> None:
    blocks = str(tmp_path / "dev" / "block")
    ctrl = tmp_path / "devices" / "pci0000:00" / "0000:00:04.0" / "nvme" / "nvme0"
    ns = _block(tmp_path, "259:0", "pci0000:00/0000:00:04.0/nvme/nvme0/nvme0n1")
    (ctrl / "transport").write_text("pcie\n")
    (ns / "device").symlink_to(ctrl)
    _block(tmp_path, "259:1", "pci0000:00/0000:00:04.0/nvme/nvme0/nvme0n1/nvme0n1p1")
    assert req._block_backing("259:1", blocks) == (True, "nvme0n1p1 is a local NVMe (PCIe) device")

    subsys = tmp_path / "devices" / "virtual" / "nvme-subsystem" / "nvme-subsys1"
    _block(tmp_path, "259:2", "virtual/nvme-subsystem/nvme-subsys1/nvme1n1")  # a native-multipath head
    (subsys / "nvme1").mkdir()
    (subsys / "nvme1" / "transport").write_text("pcie\n")
    assert req._block_backing("259:2", blocks)[0] is True
    (subsys / "nvme2").mkdir()
    (subsys / "nvme2" / "transport").write_text("tcp\n")  # a second path over the network
    assert req._block_backing("259:2", blocks) == (False, "nvme1n1 is NVMe over pcie, tcp, not local")

    dm = _block(tmp_path, "253:0", "virtual/block/dm-0")
    (dm / "slaves").mkdir()
    (dm / "slaves" / "nvme0n1p1").symlink_to(ns / "nvme0n1p1")
    ok, detail = req._block_backing("253:0", blocks)
    assert ok is True and detail.startswith("dm-0 (device-mapper, e.g. LVM) lies on local NVMe")
    sda = _block(tmp_path, "8:0", "pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sda")
    (dm / "slaves" / "sda").symlink_to(sda)
    assert req._block_backing("253:0", blocks)[0] is False

    _block(tmp_path, "9:0", "virtual/block/md0")
    assert req._block_backing("9:0", blocks) == (False, "md0 is MD software RAID, which hipFile's fastpath does "
                                                       "not support")
    assert req._block_backing("8:0", blocks) == (False, "sda is not an NVMe device")
    assert req._block_backing(None, blocks) == (False, "not a block device")


def test_kfd_topology_ais_bit(tmp_path: Path) -> None:
    assert req._kfd_reports_ais(str(tmp_path)) is None  # no nodes: cannot tell
    for node, text in (("0", "cpu_cores_count 16\nsimd_count 0\ncapability 0\n"),
                       ("1", "simd_count 304\ncapability 671588992\n")):
        (tmp_path / node).mkdir()
        (tmp_path / node / "properties").write_text(text)
    assert req._kfd_reports_ais(str(tmp_path)) is False  # a GPU node without the AIS bit
    (tmp_path / "1" / "properties").write_text(f"simd_count 304\ncapability {671588992 | 0x40}\n")
    assert req._kfd_reports_ais(str(tmp_path)) is True


def test_info_style_report_needs_nothing_but_files_here() -> None:
    """Every requirement is checked without a GPU and without raising: `pygds info` can always show them."""
    env = {**os.environ, "PYGDS_HIPFILE_LIB": "", "ROCM_PATH": ""}
    out = run_py("from pygds.cli import hipfile_requirements as req\n"
                 "for r in req.requirements(['.']): print(r.topic, '|', r.ok)", env)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 9
