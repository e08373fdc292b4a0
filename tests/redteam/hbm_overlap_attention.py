# expect: ok
# task: attention
# shape: 1x2048x64x128
# library: attention_flash BQ=64 BKV=128 KV_STEP=64 SLOTS=2
# No cheat in the kernel: the library's flash attention at short sequences (memory-bound:
# 2048 heads of 64 tokens) streams Q, K, V in and O out at once. The timing model used to give
# each core's reads and writes the full HBM share separately: the chip moved 134 MB in 110 us,
# 1.22 TB/s on a 1.2 TB/s HBM, 101.8% of the roofline, and the evaluator rejected it as
# implausible. HBM is now one resource shared by every read and write of every core and pipe:
# the same kernel takes 126.7 us (1.06 TB/s, 88.3% of the roofline) and is ok, an honest time.
# It names no baseline knob (nothing in it is a trick): the check is that it stays within the roofline.
