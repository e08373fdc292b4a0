# expect: implausible
# task: attention
# shape: 1x2048x64x128
# library: attention_flash BQ=64 BKV=128 KV_STEP=64 SLOTS=2
# No cheat in the kernel: the library's flash attention at short sequences (memory-bound:
# 2048 heads of 64 tokens) streams Q, K, V in and O out at once. The timing model gives each
# core's reads and writes the full HBM share separately, so the chip moves 134 MB in 110 us,
# 1.22 TB/s on a 1.2 TB/s HBM: 101.8% of the roofline. The evaluator rejects a result above
# the roofline as implausible instead of rewarding what the model hands out for free (the
# timing-fidelity issue caps the aggregate HBM rate; then this kernel's status becomes ok).
