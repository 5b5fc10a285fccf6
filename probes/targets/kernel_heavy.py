"""cpuprof --native truth target: nearly all CPU time in the kernel (copying /dev/zero).

usage: kernel_heavy.py SECONDS
"""
import os
import sys
import time

fd = os.open("/dev/zero", os.O_RDONLY)
buf = bytearray(1 << 20)
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    for _ in range(50):
        os.readv(fd, [buf])
