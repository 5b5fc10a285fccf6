"""`heimdall-tools compare`: Heimdall side by side with Unbound, dnsmasq or any server given by address.

Every contestant forwards to the same LocalUpstream (NSD) with the same cache
size and one server thread/process each (N with --workers). Caches are warmed
(every name of the warm set asked until answered), then each round runs the
same workloads on every contestant, the order rotated each round
(A B C, B C A, C A B, ...) so that machine drift hits all alike:

* ``qps_dnsperf``: cache-hit throughput, ``dnsperf -c 20 -T 1`` closed loop;
* ``qps_builtin``: the same with the built-in generator (20 clients, 1 process);
* ``p50_us_*`` / ``p99_us_*``: latency at a fixed offered load (10,000 q/s open
  loop), with the built-in generator and with ``dnsperf -Q 10000 -v``;
* ``cpu_pct_per_10k``: psutil CPU time of the server's process tree over the
  dnsperf 10,000 q/s window, as percent of one core, scaled to 10,000 answered q/s;
* ``rss_mb``: resident memory of the server's tree after the round;
* with ``--workloads miss,mixed`` (dnsperf): ``qps_miss`` and ``cpu_us_per_miss``,
  names no one asked before, each asked once; ``qps_mixed`` and
  ``cpu_us_per_query_mixed``, four warm-set names then one new name.

Figures are medians over rounds with min-max spread; ratios are Heimdall's
median over the peer's (and the per-round ratios' spread). Optional phases:
``--concurrency 1000,10000`` (closed-loop clients, loss = unanswered queries),
``--fill N`` (N unique names cached in Heimdall: RSS and bytes per entry), ``--scaling``
(Heimdall with twice the workers as an extra contestant), ``--variant
NAME:HEIMDALL_X=Y[,...]`` (Heimdall with other settings, for A/B of a knob
inside one interleaved run), ``--bare`` (a
uvloop responder that only echoes the question with a canned answer: the
floor any Python + uvloop server stands on). The report
(compare.json, compare.png, compare.md) goes to
performance_results/<UTC stamp>-compare/, every file written atomically.

With ``--transports udp,tcp,dot,doh`` each server is measured over each
transport it serves, a row per (server, transport); see transports.py.

One module per concept: options (what to run), contestants (starting and
stopping the servers), transports (which server serves which transport), workloads (the measurements of one round), stats
(medians, spreads, ratios), goals (the performance guide's goals), markdown
(the report files) and run (the orchestration: start, warm, rounds, report).
"""
