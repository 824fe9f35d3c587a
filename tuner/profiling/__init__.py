"""The profile flow: profiler aggregation, hot keys, the consistency check and its worker, the MiniCPM-o workload."""
