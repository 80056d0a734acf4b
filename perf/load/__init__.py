"""Load generation and what it sends: make bench's paths a to d (perf.load.bench) under the load generator (loadgen),
the workload files and how they are made (workloads, web_pages: LibreChat's web-search chunks), the first plan's
baseline (seed_approach), LibreChat's own reranker client driving a stack (librechat_bench, librechat_rerank.mjs)
and perf_analyzer on the same requests (perf_analyzer.sh).
"""
