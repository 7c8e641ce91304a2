"""Host metrics under node_exporter's names, read with psutil.

The names, labels and units are node_exporter's (``node_cpu_seconds_total{cpu,mode}``,
``node_memory_MemAvailable_bytes``, ``node_filesystem_avail_bytes{device,fstype,mountpoint}``...)
so that the dashboards and alert rules teams already have for node_exporter (CPU, memory,
disk-full, load) work on what the agent sends, without a translation layer.

Each collector is a small function returning ``(name, labels, value)`` triples; one that fails
(a kernel without the file, a permission error) is skipped and counted, never fatal, because a
host agent must keep reporting the rest.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil

__all__ = ["COLLECTORS", "HELP", "Sample", "collect"]

log = logging.getLogger("stackwatch.agent")

Sample = tuple[str, dict[str, str], float]

# node_exporter's default exclusions: pseudo and virtual file systems, and mount points that
# only mirror the system's own state.
_FS_TYPES_EXCLUDED = re.compile(
    r"^(autofs|binfmt_misc|bpf|cgroup2?|configfs|debugfs|devpts|devtmpfs|fusectl|hugetlbfs|iso9660|mqueue|nsfs"
    r"|overlay|proc|procfs|pstore|rpc_pipefs|securityfs|selinuxfs|squashfs|erofs|sysfs|tracefs)$"
)
_MOUNTS_EXCLUDED = re.compile(r"^/(dev|proc|run/credentials/.+|sys|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)")

HELP: dict[str, tuple[str, str]] = {
    "node_cpu_seconds_total": ("counter", "Seconds the CPUs spent in each mode."),
    "node_load1": ("gauge", "1m load average."),
    "node_load5": ("gauge", "5m load average."),
    "node_load15": ("gauge", "15m load average."),
    "node_memory_MemTotal_bytes": ("gauge", "Memory information field MemTotal_bytes."),
    "node_memory_MemAvailable_bytes": ("gauge", "Memory information field MemAvailable_bytes."),
    "node_memory_MemFree_bytes": ("gauge", "Memory information field MemFree_bytes."),
    "node_memory_Buffers_bytes": ("gauge", "Memory information field Buffers_bytes."),
    "node_memory_Cached_bytes": ("gauge", "Memory information field Cached_bytes."),
    "node_memory_SwapTotal_bytes": ("gauge", "Memory information field SwapTotal_bytes."),
    "node_memory_SwapFree_bytes": ("gauge", "Memory information field SwapFree_bytes."),
    "node_filesystem_size_bytes": ("gauge", "Filesystem size in bytes."),
    "node_filesystem_avail_bytes": ("gauge", "Filesystem space available to non-root users in bytes."),
    "node_filesystem_free_bytes": ("gauge", "Filesystem free space in bytes."),
    "node_filesystem_files": ("gauge", "Filesystem total file nodes."),
    "node_filesystem_files_free": ("gauge", "Filesystem total free file nodes."),
    "node_filesystem_readonly": ("gauge", "Filesystem read-only status."),
    "node_disk_read_bytes_total": ("counter", "The total number of bytes read successfully."),
    "node_disk_written_bytes_total": ("counter", "The total number of bytes written successfully."),
    "node_disk_reads_completed_total": ("counter", "The total number of reads completed successfully."),
    "node_disk_writes_completed_total": ("counter", "The total number of writes completed successfully."),
    "node_disk_read_time_seconds_total": ("counter", "The total number of seconds spent by all reads."),
    "node_disk_write_time_seconds_total": ("counter", "The total number of seconds spent by all writes."),
    "node_disk_io_time_seconds_total": ("counter", "Total seconds spent doing I/Os."),
    "node_network_receive_bytes_total": ("counter", "Network device statistic receive_bytes."),
    "node_network_transmit_bytes_total": ("counter", "Network device statistic transmit_bytes."),
    "node_network_receive_packets_total": ("counter", "Network device statistic receive_packets."),
    "node_network_transmit_packets_total": ("counter", "Network device statistic transmit_packets."),
    "node_network_receive_errs_total": ("counter", "Network device statistic receive_errs."),
    "node_network_transmit_errs_total": ("counter", "Network device statistic transmit_errs."),
    "node_network_receive_drop_total": ("counter", "Network device statistic receive_drop."),
    "node_network_transmit_drop_total": ("counter", "Network device statistic transmit_drop."),
    "node_network_up": ("gauge", "Value is 1 if operstate is 'up', 0 otherwise."),
    "node_boot_time_seconds": ("gauge", "Node boot time, in unixtime."),
    "node_time_seconds": ("gauge", "System time in seconds since epoch (1970)."),
    "node_context_switches_total": ("counter", "Total number of context switches."),
    "node_intr_total": ("counter", "Total number of interrupts serviced."),
    "node_procs_running": ("gauge", "Number of processes in runnable state."),
    "node_procs_blocked": ("gauge", "Number of processes blocked waiting for I/O to complete."),
    "node_filefd_allocated": ("gauge", "File descriptor statistics: allocated."),
    "node_filefd_maximum": ("gauge", "File descriptor statistics: maximum."),
    "node_uname_info": ("gauge", "Labeled system information as provided by the uname system call."),
    "node_scrape_collector_success": ("gauge", "Whether a collector succeeded."),
}


def _cpu() -> Iterator[Sample]:
    for i, times in enumerate(psutil.cpu_times(percpu=True)):
        for mode, value in times._asdict().items():
            if mode in ("guest", "guest_nice"):
                continue  # node_exporter reports these in node_cpu_guest_seconds_total
            yield "node_cpu_seconds_total", {"cpu": str(i), "mode": mode}, float(value)


def _load() -> Iterator[Sample]:
    one, five, fifteen = os.getloadavg()
    yield "node_load1", {}, one
    yield "node_load5", {}, five
    yield "node_load15", {}, fifteen


def _memory() -> Iterator[Sample]:
    vm = psutil.virtual_memory()
    yield "node_memory_MemTotal_bytes", {}, float(vm.total)
    yield "node_memory_MemAvailable_bytes", {}, float(vm.available)
    yield "node_memory_MemFree_bytes", {}, float(vm.free)
    for field, name in (("buffers", "Buffers"), ("cached", "Cached")):
        if hasattr(vm, field):
            yield f"node_memory_{name}_bytes", {}, float(getattr(vm, field))
    swap = psutil.swap_memory()
    yield "node_memory_SwapTotal_bytes", {}, float(swap.total)
    yield "node_memory_SwapFree_bytes", {}, float(swap.free)


def _filesystem() -> Iterator[Sample]:
    seen: set[str] = set()
    for part in psutil.disk_partitions(all=True):
        if _FS_TYPES_EXCLUDED.match(part.fstype) or _MOUNTS_EXCLUDED.match(part.mountpoint):
            continue
        if part.mountpoint in seen:
            continue
        seen.add(part.mountpoint)
        try:
            st = os.statvfs(part.mountpoint)
        except OSError:
            continue  # unmounted meanwhile, or not ours to read
        labels = {"device": part.device, "fstype": part.fstype, "mountpoint": part.mountpoint}
        yield "node_filesystem_size_bytes", labels, float(st.f_blocks * st.f_frsize)
        yield "node_filesystem_free_bytes", labels, float(st.f_bfree * st.f_frsize)
        yield "node_filesystem_avail_bytes", labels, float(st.f_bavail * st.f_frsize)
        yield "node_filesystem_files", labels, float(st.f_files)
        yield "node_filesystem_files_free", labels, float(st.f_ffree)
        yield "node_filesystem_readonly", labels, 1.0 if st.f_flag & os.ST_RDONLY else 0.0


def _disk() -> Iterator[Sample]:
    for device, c in (psutil.disk_io_counters(perdisk=True) or {}).items():
        if device.startswith(("loop", "ram")):
            continue  # node_exporter's default device exclusion
        labels = {"device": device}
        yield "node_disk_read_bytes_total", labels, float(c.read_bytes)
        yield "node_disk_written_bytes_total", labels, float(c.write_bytes)
        yield "node_disk_reads_completed_total", labels, float(c.read_count)
        yield "node_disk_writes_completed_total", labels, float(c.write_count)
        yield "node_disk_read_time_seconds_total", labels, c.read_time / 1000
        yield "node_disk_write_time_seconds_total", labels, c.write_time / 1000
        if hasattr(c, "busy_time"):
            yield "node_disk_io_time_seconds_total", labels, c.busy_time / 1000


def _network() -> Iterator[Sample]:
    stats = psutil.net_if_stats()
    for device, c in psutil.net_io_counters(pernic=True).items():
        labels = {"device": device}
        yield "node_network_receive_bytes_total", labels, float(c.bytes_recv)
        yield "node_network_transmit_bytes_total", labels, float(c.bytes_sent)
        yield "node_network_receive_packets_total", labels, float(c.packets_recv)
        yield "node_network_transmit_packets_total", labels, float(c.packets_sent)
        yield "node_network_receive_errs_total", labels, float(c.errin)
        yield "node_network_transmit_errs_total", labels, float(c.errout)
        yield "node_network_receive_drop_total", labels, float(c.dropin)
        yield "node_network_transmit_drop_total", labels, float(c.dropout)
        if device in stats:
            yield "node_network_up", labels, 1.0 if stats[device].isup else 0.0


def _stat() -> Iterator[Sample]:
    yield "node_boot_time_seconds", {}, float(psutil.boot_time())
    yield "node_time_seconds", {}, time.time()
    cpu = psutil.cpu_stats()
    yield "node_context_switches_total", {}, float(cpu.ctx_switches)
    yield "node_intr_total", {}, float(cpu.interrupts)
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith(("procs_running ", "procs_blocked ")):
                    key, value = line.split()
                    yield f"node_{key}", {}, float(value)
    except OSError:
        pass  # not Linux: the two gauges are absent, as on node_exporter elsewhere


def _filefd() -> Iterator[Sample]:
    with open("/proc/sys/fs/file-nr") as f:
        allocated, _unused, maximum = f.read().split()
    yield "node_filefd_allocated", {}, float(allocated)
    yield "node_filefd_maximum", {}, float(maximum)


def _uname() -> Iterator[Sample]:
    u = platform.uname()
    yield "node_uname_info", {"sysname": u.system, "release": u.release, "version": u.version,
                              "machine": u.machine, "nodename": u.node, "domainname": "(none)"}, 1.0


COLLECTORS: dict[str, Callable[[], Iterator[Sample]]] = {
    "cpu": _cpu,
    "loadavg": _load,
    "meminfo": _memory,
    "filesystem": _filesystem,
    "diskstats": _disk,
    "netdev": _network,
    "stat": _stat,
    "filefd": _filefd,
    "uname": _uname,
}


def collect(enabled: Any = None) -> list[Sample]:
    """All samples of the enabled collectors (default: all), plus
    ``node_scrape_collector_success{collector}`` saying which ones worked."""
    out: list[Sample] = []
    for name, fn in COLLECTORS.items():
        if enabled is not None and name not in enabled:
            continue
        try:
            samples = list(fn())
        except Exception as exc:  # one broken collector must not stop the others
            log.warning("collector %s failed: %s", name, exc)
            out.append(("node_scrape_collector_success", {"collector": name}, 0.0))
            continue
        out.extend(samples)
        out.append(("node_scrape_collector_success", {"collector": name}, 1.0))
    return out
