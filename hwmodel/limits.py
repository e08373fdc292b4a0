"""Limits on what one kernel may ask of the simulator, defined once.

The sandbox enforces them while recording and the trusted side checks them again on
the trace it receives, so a forged trace can claim nothing an honest kernel could not
do. Each limit is far above what any library kernel needs at the benchmark shapes.
"""
from __future__ import annotations

MAX_OPS = 5_000_000                 # ops per trace, all cores together
MAX_OPS_PER_CORE = 2_000_000        # ops one core may issue
MAX_WORKSPACE_BYTES = 2 * 2**30     # GM scratch (k.workspace) per trace, all workspaces together
MAX_WORKSPACES = 64                 # k.workspace calls per core
MAX_BUFFERS_PER_CORE = 256          # k.alloc / k.ring calls per core
MAX_VIEW_RANK = 6                   # dimensions of a tensor, buffer or view
MAX_NAME_CHARS = 64                 # buffer and workspace names
MAX_L2_BLOCK_TOUCHES = 200_000_000  # (L2 block, GM transfer) pairs timing walks (hwmodel.timing.l2_work); library
                                    # kernels at their benchmark shapes on ascend-910a: at most 16.8M (sgemm_vector
                                    # 4096^3), 1.7M for every other family
