"""`make bench`: the benchmarks. They measure the agent as a gateway runs it, so numpy gets one BLAS
thread here too, before any suite loads it (`edge-agent` asks for the same: core/blas_threads.py)."""

from water_edge.core.blas_threads import prefer_one_blas_thread

prefer_one_blas_thread()
