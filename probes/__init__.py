"""BCC eBPF probes (tracepoints and uprobes only) that heimdall-tools attaches to a pid."""
