"""The PyTorch CPU peer: the engine's forward pass beside transformers' Qwen3Model on the same GGUF weights, same ids
and threads, with per-op profiles (torch_comparison, qwen3_torch); torch_peer is its command line. torch and
transformers come from perf/peers/requirements.txt and are imported only once a comparison runs.
"""
