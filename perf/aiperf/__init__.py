"""NVIDIA's AIPerf beside this project's load generator on the same requests: the bench (aiperf_bench), its datasets
(aiperf_dataset, written into this folder: *.jsonl for the adapter, *-triton.json for Triton) and the offline
tokenizer AIPerf counts tokens with (aiperf_tokenizer).
"""
