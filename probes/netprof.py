"""netprof: UDP receive-queue latency, socket drops, recv/send/epoll batching, in-server time.

probes/netprof.bpf.c does the measuring (see its header for the method); this
module picks the ports to watch, attaches, reads the maps into JSON and prints
tables. The watched ports are --port, or every unconnected UDP socket the
target's process tree has bound (found with psutil when the window opens): a
supervisor's workers bind their own SO_REUSEPORT sockets.
"""

from __future__ import annotations

import time
from typing import Any

from probes.base import Probe, per_query, pid_alive
from probes.doctor import tracepoint_exists
from probes.histogram import HIST_BUCKETS, Histogram
from probes.proctree import ensure_listed, render_processes, tree_note, tree_pids
from tools.errors import EXIT_INCONCLUSIVE, EXIT_TARGET, ToolError

SCHEMA = "heimdall.netprof/1"
KINDS = ("recvfrom", "recvmsg", "recvmmsg", "sendto", "sendmsg", "sendmmsg",
         "epoll_wait", "epoll_pwait", "epoll_pwait2")
RECV_KINDS = KINDS[0:3]
SEND_KINDS = KINDS[3:6]
EPOLL_KINDS = KINDS[6:9]
OPTIONAL_SYSCALLS = ("epoll_wait", "epoll_pwait2")   # per architecture / kernel version
BATCH_KINDS = ("recvmmsg", "sendmmsg", *EPOLL_KINDS)
H_QUEUE, H_SERVER, H_SYSCALL = 0, 1, 2
COUNTERS = ("queued", "matched", "unmatched", "overflow", "resync_discarded", "drops",
            "drops_all_ports", "rcvqueue_full_any_socket", "sent", "other_reader", "server_unpaired",
            "early_reads")
PORT_WAIT_S = 5.0   # how long open_window waits for a launched server to bind

NOTES = [
    "queue latency: sock:sk_data_ready (datagram queued) to sock:sock_recv_length (read), "
    "matched per socket in FIFO order; a read that beats its datagram's sk_data_ready (another "
    "CPU) counts with queue time 0 (fifo.early_reads)",
    "server time: per thread, from the latest datagram read on a watched socket to the next "
    "send on that socket; with batched reads or cache misses it measures from the latest read, "
    "so it underestimates",
    "recv/send syscalls count only calls that touched a UDP socket; epoll waits include idle time",
    "rcvqueue_full_any_socket comes from sock:sock_rcvqueue_full, which names no socket",
]

def udp_listen_ports(pid: int) -> list[int]:
    """Local ports of the unconnected UDP sockets (server sockets) of pid and its descendants."""
    import psutil

    if not pid_alive(pid):
        raise ToolError(f"pid {pid} does not exist", EXIT_TARGET)
    ports: set[int] = set()
    for member in tree_pids(pid):
        try:
            conns = psutil.Process(member).net_connections(kind="udp")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        ports |= {c.laddr.port for c in conns if c.laddr and not c.raddr}
    return sorted(ports)


def _hist_slots(table, nslots: int) -> list[Histogram]:
    """Decode a BPF_ARRAY of nslots log-linear histograms in one pass."""
    hists = [Histogram() for _ in range(nslots)]
    for key, val in table.items():
        if val.value:
            slot, idx = divmod(key.value, HIST_BUCKETS)
            if slot < nslots:
                hists[slot].counts[idx] = int(val.value)
    return hists


class NetProf(Probe):
    """UDP socket probe for a server's process tree (see probes/netprof.bpf.c)."""

    name = "netprof"
    bpf_file = "netprof.bpf.c"
    schema = SCHEMA
    window_tables = ("net_hist", "net_batch", "net_sys", "net_count", "net_max", "net_sock_drops")
    proc_slots = ("datagrams", "recv_syscalls", "send_syscalls", "epoll_waits")

    def __init__(self, pid: int, port: int | None = None, **opts: Any) -> None:
        super().__init__(pid, **opts)
        if port is not None and not 0 < port < 65536:
            raise ToolError(f"--port must be 1..65535 (got {port})", EXIT_INCONCLUSIVE)
        self.port = port
        self.ports: list[int] = [port] if port else []

    def cflags(self) -> list[str]:
        """Attach only the syscall tracepoints this kernel has (arm64 has no epoll_wait)."""
        return [f"-DHAVE_{name.upper()}" for name in OPTIONAL_SYSCALLS
                if tracepoint_exists(f"syscalls:sys_enter_{name}")]

    def attach_points(self, bpf) -> None:
        """Watch ports already known at attach, so the FIFO runs through the warm-up."""
        if not self.ports:
            self.ports = udp_listen_ports(self.pid)
        self._set_ports(bpf)

    def _set_ports(self, bpf) -> None:
        table = bpf[b"net_ports"]
        table.clear()
        for port in self.ports:
            table[table.Key(port)] = table.Leaf()

    def prepare_window(self) -> None:
        """Find the server's ports (waiting briefly for a launched one), then prepare."""
        if self.port is None:
            deadline = time.monotonic() + PORT_WAIT_S
            ports = udp_listen_ports(self.pid)
            while not ports and time.monotonic() < deadline and pid_alive(self.pid):
                time.sleep(0.1)
                ports = udp_listen_ports(self.pid)
            if not ports:
                raise ToolError(f"pid {self.pid} has no unconnected UDP socket; pass --port PORT",
                                EXIT_TARGET)
            if ports != self.ports:
                self.ports = ports
                self._set_ports(self.bpf)
        else:
            self._set_ports(self.bpf)   # zero the per-port counters
        super().prepare_window()

    # --- read-out -------------------------------------------------------------
    def processes(self) -> dict[int, dict]:
        """Per-process figures; a socket's drops go to the watched process that reads it."""
        procs = super().processes()
        for row in procs.values():
            row["drops"] = 0
        socks = self.table("net_socks")
        for sk, n in self.table("net_sock_drops").items():
            try:
                owner = int(socks[sk].owner)
            except KeyError:
                continue
            if owner:
                ensure_listed(procs, [owner], {**{k: 0 for k in self.proc_slots}, "drops": 0})
                procs[owner]["drops"] += int(n.value)
        return procs

    def read(self, queries: int | None) -> dict:
        bpf = self.bpf
        assert bpf is not None  # read() runs inside collect(), after attach()
        count_tab = bpf[b"net_count"]
        counts = {name: int(count_tab[count_tab.Key(i)].value) for i, name in enumerate(COUNTERS)}
        max_tab = bpf[b"net_max"]
        exact_max = [int(max_tab[max_tab.Key(i)].value) for i in range(2)]
        hists = _hist_slots(bpf[b"net_hist"], H_SYSCALL + len(KINDS))
        batches = _hist_slots(bpf[b"net_batch"], len(KINDS))
        syscalls = self._read_syscalls(hists, batches)
        by_port = {str(k.value): {"queued": int(v.queued), "read": int(v.read), "drops": int(v.drops)}
                   for k, v in bpf[b"net_ports"].items()}
        recv_calls = sum(syscalls[k]["calls"] for k in RECV_KINDS)
        send_calls = sum(syscalls[k]["calls"] for k in SEND_KINDS)
        epoll_calls = sum(syscalls[k]["calls"] for k in EPOLL_KINDS)
        queue, server = hists[H_QUEUE], hists[H_SERVER]
        udp = {
            "ports": self.ports,
            "datagrams": counts["matched"],
            "queued": counts["queued"],
            "queue_latency_us": queue.summary(1000.0, exact_max[0] if queue.total else None),
            "queue_latency_histogram": queue.to_json(),
            "drops": counts["drops"],
            "drops_all_ports": counts["drops_all_ports"],
            "rcvqueue_full_any_socket": counts["rcvqueue_full_any_socket"],
            "recv_syscalls": recv_calls,
            "send_syscalls": send_calls,
            "epoll_waits": epoll_calls,
            "sent": counts["sent"],
            "server_time_us": server.summary(1000.0, exact_max[1] if server.total else None),
            "server_time_histogram": server.to_json(),
            "by_port": by_port,
        }
        out: dict[str, Any] = {
            "udp": udp,
            "syscalls": syscalls,
            "fifo": {k: counts[k] for k in ("unmatched", "overflow", "resync_discarded",
                                            "other_reader", "server_unpaired", "early_reads")},
            "notes": NOTES,
        }
        pq = per_query({"datagrams": counts["matched"], "recv_syscalls": recv_calls,
                        "send_syscalls": send_calls, "epoll_waits": epoll_calls,
                        "drops": counts["drops"]}, queries)
        if pq is not None:
            out["per_query"] = pq
        return out

    def _read_syscalls(self, hists: list[Histogram], batches: list[Histogram]) -> dict:
        table = self.table("net_sys")
        result = {}
        for i, kind in enumerate(KINDS):
            st = table[table.Key(i)]
            calls = int(st.calls)
            entry: dict[str, Any] = {"calls": calls, "errors": int(st.errors), "empty": int(st.empty),
                                     "latency_us": hists[H_SYSCALL + i].summary(1000.0)}
            if kind in BATCH_KINDS:
                ok = calls - int(st.errors)
                entry["items"] = int(st.items)
                entry["items_per_call"] = round(int(st.items) / ok, 3) if ok > 0 else 0.0
                entry["items_per_call_p99"] = round(batches[i].percentile(0.99), 1)
            result[kind] = entry
        return result

    @classmethod
    def render(cls, result: dict, console) -> None:
        """Queue latency, drops and server time, then the syscall table."""
        from rich.markup import escape
        from rich.table import Table

        udp = result["udp"]
        title = f"netprof pid {result['pid']} ({result['comm']}){tree_note(result)} ports {udp['ports']} " \
                f"{result['duration_s']:.2f}s" + (escape(f" [partial: {result.get('end_reason')}]") if result.get("partial") else "")
        t = Table(title=title)
        for col in ("metric", "count", "p50 us", "p90 us", "p99 us", "max us"):
            t.add_column(col, justify="right" if col != "metric" else "left")
        for label, key, n in (("receive-queue latency", "queue_latency_us", udp["datagrams"]),
                              ("server time (read -> send)", "server_time_us", udp["server_time_us"]["count"])):
            s = udp[key]
            t.add_row(label, str(n), *(f"{s[p]:.1f}" for p in ("p50", "p90", "p99", "max")))
        console.print(t)
        render_processes(result, console, [("datagrams", "datagrams"), ("recv calls", "recv_syscalls"),
                                           ("send calls", "send_syscalls"), ("drops", "drops")])
        fifo = result["fifo"]
        console.print(f"drops (receive buffer full, watched ports): {udp['drops']}  "
                      f"any port: {udp['drops_all_ports']}  sock_rcvqueue_full (any socket): "
                      f"{udp['rcvqueue_full_any_socket']}  datagrams sent: {udp['sent']}", highlight=False)
        console.print(f"unmatched reads: {fifo['unmatched']}  reads before their sk_data_ready: "
                      f"{fifo['early_reads']}  FIFO overflow: {fifo['overflow']}  "
                      f"resync discarded: {fifo['resync_discarded']}  lost: {result.get('lost')}",
                      highlight=False)
        s = Table(title="syscalls (watched processes; recv/send only on UDP sockets)")
        for col in ("syscall", "calls", "errors", "items/call", "p50 us", "p99 us", "max us"):
            s.add_column(col, justify="right" if col != "syscall" else "left")
        for kind, e in result["syscalls"].items():
            if e["calls"]:
                lat = e["latency_us"]
                s.add_row(kind, str(e["calls"]), str(e["errors"]), str(e.get("items_per_call", "")),
                          f"{lat['p50']:.1f}", f"{lat['p99']:.1f}", f"{lat['max']:.1f}")
        console.print(s)
        if result.get("per_query"):
            console.print(f"per query: {result['per_query']}", highlight=False)
