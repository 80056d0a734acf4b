"""The one-shot GPU check: llama.cpp's CUDA libraries built for the GPU at hand (gpu_check.sh), the engine's fidelity
on it, its speed beside PyTorch bf16 and LibreChat's search per call (gpu_check), and the folder carried to a GPU
host without a package registry (gpu_check_prepare).
"""
