"""The kernel's CPU cost of writing an audit spool, buffered or direct (O_DIRECT), by write size.

What the audit log's `direct_writes` setting rests on (docs/benchmarks.md, "Sixth pass"): for
each write size, 400 MiB are written into 8 MiB segments the way the spool writes them (appended,
then fsynced and renamed when full; a buffered segment is also dropped from the page cache, as
the local store does after its move), and the process's CPU time (user + system) is reported per
4 KiB, for the writes and for the seals apart.

    python3 benches/http/spool_write_cost.py [DIR]   # DIR on the spool's file system (default /var/tmp)
"""

import mmap
import os
import resource
import sys
import tempfile

TOTAL = 400 << 20
SEGMENT = 8 << 20


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(directory, direct, chunk):
    # mmap'd memory is page-aligned, as O_DIRECT needs.
    buffer = mmap.mmap(-1, chunk)
    buffer.write(b"x" * (chunk - 1) + b"\n")
    path = os.path.join(directory, "segment.open")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (os.O_DIRECT if direct else 0)
    descriptor = os.open(path, flags, 0o644)
    write_cpu = seal_cpu = 0.0
    written = in_segment = sealed = 0
    while written < TOTAL:
        start = cpu_seconds()
        os.write(descriptor, buffer)
        write_cpu += cpu_seconds() - start
        written += chunk
        in_segment += chunk
        if in_segment >= SEGMENT:
            start = cpu_seconds()
            os.fsync(descriptor)
            if not direct:
                os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(descriptor)
            os.rename(path, os.path.join(directory, f"sealed-{sealed}.jsonl"))
            sealed += 1
            descriptor = os.open(path, flags, 0o644)
            in_segment = 0
            seal_cpu += cpu_seconds() - start
    os.close(descriptor)
    for name in os.listdir(directory):
        os.unlink(os.path.join(directory, name))
    pages = TOTAL / 4096
    return write_cpu / pages * 1e6, seal_cpu / pages * 1e6


def main():
    parent = sys.argv[1] if len(sys.argv) > 1 else "/var/tmp"
    with tempfile.TemporaryDirectory(dir=parent) as directory:
        print("| write size | buffered: write, seal (µs CPU per 4 KiB) | direct: write, seal |")
        print("|---|---|---|")
        for chunk in (16 << 10, 64 << 10, 256 << 10, 1 << 20):
            buffered = run(directory, False, chunk)
            direct = run(directory, True, chunk)
            print(
                f"| {chunk >> 10} KiB | {buffered[0]:.2f}, {buffered[1]:.2f} "
                f"| {direct[0]:.2f}, {direct[1]:.2f} |"
            )


if __name__ == "__main__":
    main()
