"""heimdall-tools: the performance lab (load generator, probes, bench, regression gate)."""
