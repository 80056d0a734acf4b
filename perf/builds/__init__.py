"""llama.cpp builds side by side: each comparison runs two builds (or options) of the engine in child processes taking
turns on the stand-in and reports tokens/s and the hidden states' agreement: ggml's AMX build against the AVX-512
one (amx_*), the repacked Q8_0 path on and off (q8_repack_*), the flash attention's BF16 products against F32
(bf16_attention_*), v3.5's sliding-window layers against v3's (swa_bench). The *_bench modules are the command
lines, the *_comparison modules what make bench also runs.
"""
