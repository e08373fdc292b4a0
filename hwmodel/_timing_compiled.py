"""The bandwidth profile's hot loop compiled with numba: `move` of hwmodel.timing._Bandwidth on
numpy arrays instead of lists, the same float operations in the same order (so the same
results bit for bit). Imported only for traces with many GM transfers: importing numba and
loading the cached machine code costs about half a second once per process.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def _insert(times, use_h, use_l, n, i, t):
    """Split segment i at t: a new segment i + 1 starts at t with segment i's usage."""
    for j in range(n, i + 1, -1):
        times[j] = times[j - 1]
        use_h[j] = use_h[j - 1]
        use_l[j] = use_l[j - 1]
    times[i + 1] = t
    use_h[i + 1] = use_h[i]
    use_l[i + 1] = use_l[i]


@njit(cache=True)
def move(times, use_h, use_l, count, t, nbytes, cap, hbm, hbm_cap, l2_cap, eps):
    """_Bandwidth.move on the first count[0] entries of the arrays (count[0] is updated).
    Returns -1.0 without changing anything when the arrays may lack room for two more segments."""
    n = count[0]
    if n + 2 > times.shape[0]:
        return -1.0
    lo, hi = 0, n                       # bisect_right(times, t) - 1
    while lo < hi:
        mid = (lo + hi) >> 1
        if t < times[mid]:
            hi = mid
        else:
            lo = mid + 1
    i = lo - 1
    if times[i] != t:
        _insert(times, use_h, use_l, n, i, t)
        n += 1
        i += 1
    left = nbytes
    while True:
        rate = l2_cap - use_l[i]
        if hbm and hbm_cap - use_h[i] < rate:
            rate = hbm_cap - use_h[i]
        if cap < rate:
            rate = cap
        if rate <= eps:
            i += 1
            continue
        a = times[i]
        end = a + left / rate
        b = times[i + 1] if i + 1 < n else np.inf
        if end < b:
            if end <= a:
                count[0] = n
                return a
            _insert(times, use_h, use_l, n, i, end)
            n += 1
            use_l[i] += rate
            if hbm:
                use_h[i] += rate
            count[0] = n
            return end
        use_l[i] += rate
        if hbm:
            use_h[i] += rate
        left -= rate * (b - a)
        i += 1
        if left <= 1e-9 * nbytes:
            count[0] = n
            return b
