"""Local tooling: build llama-cpp-python, launch Triton and the adapter, fetch model files."""
