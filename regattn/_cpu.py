"""Compiled CPU kernels (numba) for the regularized attention mappings.

Every kernel works on 2-D arrays of rows, one attention distribution per row, of
any strides (``regattn.functional`` passes views of the tensors themselves, so a
decoder step's (source length, batch) scores along dim 0 are read and written in
place, without transposed copies), and processes the half-open row range
``[lo, hi)``. A forward kernel also takes ``mask``, None or a bool array of the rows'
shape (True = take part), and reads a masked position as a ``-inf`` score. The
serial path calls a kernel on all rows; the parallel path
(``forward_parallel``/``backward_parallel``) splits the rows into one chunk per
thread. Kernels allocate their scratch space once per chunk, never per row.

Each forward kernel is a loop over rows around a row function (``_sparsemax_row``
...), called on the row itself when there is no mask, and on a masked copy of it
otherwise: numba compiles one version per layout and mask type, so the common
unmasked, contiguous case keeps its vectorised loops.

Conventions shared by all kernels:

* ``-inf`` scores are masked: they get exactly 0 and no gradient, and the structured
  maps (fusedmax, oscarmax) run on the remaining positions only, in their order.
* A row containing ``+inf`` is the limit of its scores growing without bound: the
  mass is spread uniformly over the ``+inf`` positions and the gradient is 0.
* A row containing NaN returns NaN (and a NaN gradient); other rows are unaffected.
* A row with no valid position returns zeros and a zero gradient.
* ``aux`` is an int32 array saved for the backward pass. Threshold maps (sparsemax,
  sq-pnorm-max, entmax15) use one column of row flags; the structured maps store,
  for each position, the id of its fused group (``NO_GRAD`` outside the support).
* Scores are shifted by the row's largest valid score, then divided by gamma
  (multiplied by ``inv_gamma``): every map is shift invariant, and on shifted scores
  no finite input, however large, loses the support to rounding (in float64,
  ``max - 1 == max`` once scores pass about 1e16). Internal arithmetic is float64
  whatever the storage type.
* No kernel raises, and every loop is bounded (see ``_tv_prox`` and
  ``_argsort_desc`` for the two whose textbook forms have quadratic worst cases).
"""

import functools
import math

import numpy as np
from numba import njit, prange

# error_model="numpy": a division by zero gives inf or NaN instead of raising, so no
# input can make a kernel raise (inside a parallel region that would abort the whole
# batch); a row that cannot be computed comes out as NaN.
_jit = functools.partial(njit, cache=True, error_model="numpy")
# The row functions are inlined into their row loops: on short rows the call itself
# (its array arguments and the views made from them) costs up to a sixth of a row.
_row_jit = functools.partial(_jit, inline="always")

# Row flags / group ids with a special meaning.
NORMAL = 0
NO_GRAD = -1  # position (or row) receives a zero gradient
NAN_ROW = -2  # row had a NaN score: NaN output and NaN gradient

SPARSEMAX, FUSEDMAX, OSCARMAX, SQ_PNORM_MAX, ENTMAX15 = range(5)
STRUCTURED = (FUSEDMAX, OSCARMAX)


# --------------------------------------------------------------------------- helpers


@_jit
def _michelot(vals, counts, k):
    """Threshold tau with sum_i counts[i] * max(vals[i] - tau, 0) == 1.

    ``vals[:k]`` must contain every value of the support (for example all values
    above ``max - 1``). Michelot's algorithm: each pass drops the values at or below
    the current threshold, which can only rise, until nothing is dropped. Expected
    linear time; ``vals`` and ``counts`` are overwritten.
    """
    total = 0.0
    weight = 0.0
    for i in range(k):
        total += vals[i] * counts[i]
        weight += counts[i]
    tau = (total - 1.0) / weight
    while True:
        kept = 0
        total = 0.0
        weight = 0.0
        for i in range(k):
            v = vals[i]
            if v > tau:
                vals[kept] = v
                counts[kept] = counts[i]
                kept += 1
                total += v * counts[i]
                weight += counts[i]
        if kept == k:
            return tau
        k = kept
        tau = (total - 1.0) / weight


# Reassociation lets LLVM vectorise the reductions; NaN and inf keep their meaning.
_VECTORISE = {"reassoc", "nsz"}


@_jit(fastmath=_VECTORISE)
def _row_stats(row):
    """Largest score of a row, whether it holds a NaN, and how many -inf (masked)."""
    vmax = -np.inf
    nan_count = 0
    masked = 0
    for i in range(row.shape[0]):
        v = row[i]
        vmax = v if v > vmax else vmax
        nan_count += v != v
        masked += v == -np.inf
    return vmax, nan_count > 0, masked


@_jit
def _uniform_over_posinf(row, out_row):
    count = 0
    for i in range(row.shape[0]):
        if row[i] == np.inf:
            count += 1
    for i in range(row.shape[0]):
        out_row[i] = 1.0 / count if row[i] == np.inf else 0.0


@_jit
def _special_row(row, out_row, vmax, has_nan):
    """Handle NaN, +inf and fully masked rows; return their flag, or NORMAL."""
    if has_nan:
        out_row[:] = np.nan
        return NAN_ROW
    if vmax == np.inf:
        _uniform_over_posinf(row, out_row)
        return NO_GRAD
    if vmax == -np.inf:
        out_row[:] = 0.0
        return NO_GRAD
    return NORMAL


@_jit
def _backward_special(flag, grad_row):
    """Write the gradient of a special row; return True if it was one."""
    if flag == NAN_ROW:
        grad_row[:] = np.nan
        return True
    if flag == NO_GRAD:
        grad_row[:] = 0.0
        return True
    return False


@_jit
def _masked_row(x, mask, r, buf):
    """Copy row ``r`` of ``x`` to ``buf`` (float64), with ``-inf`` at masked positions."""
    for i in range(x.shape[1]):
        buf[i] = x[r, i] if mask[r, i] else -np.inf


# ------------------------------------------------------------------------ sparsemax


@_row_jit
def _sparsemax_row(row, out_row, inv_gamma, vals, counts):
    """Write sparsemax(row * inv_gamma) to ``out_row``; return the row flag."""
    vmax, has_nan, _ = _row_stats(row)
    flag = _special_row(row, out_row, vmax, has_nan)
    if flag != NORMAL:
        return flag
    k = 0
    for i in range(row.shape[0]):
        v = (row[i] - vmax) * inv_gamma
        if v > -1.0:  # no score at or below max - 1 is in the support
            vals[k] = v
            counts[k] = 1.0
            k += 1
    tau = _michelot(vals, counts, k)
    for i in range(row.shape[0]):
        v = (row[i] - vmax) * inv_gamma - tau
        out_row[i] = v if v > 0.0 else 0.0
    return NORMAL


@_jit
def sparsemax_forward(x, mask, out, aux, inv_gamma, param, lo, hi):
    d = x.shape[1]
    vals = np.empty(d)
    counts = np.ones(d)
    masked = np.empty(d)
    for r in range(lo, hi):
        if mask is None:
            aux[r, 0] = _sparsemax_row(x[r], out[r], inv_gamma, vals, counts)
        else:
            _masked_row(x, mask, r, masked)
            aux[r, 0] = _sparsemax_row(masked, out[r], inv_gamma, vals, counts)


@_jit
def sparsemax_backward(y, aux, g, grad, inv_gamma, param, lo, hi):
    d = y.shape[1]
    for r in range(lo, hi):
        if _backward_special(aux[r, 0], grad[r]):
            continue
        total = 0.0
        size = 0
        for i in range(d):
            if y[r, i] > 0.0:
                total += g[r, i]
                size += 1
        mean = total / size
        for i in range(d):
            grad[r, i] = (g[r, i] - mean) * inv_gamma if y[r, i] > 0.0 else 0.0


# ----------------------------------------------------- structured maps (fused groups)


# Shifted scores below this are clamped to it: positions that far below the maximum
# are outside the support either way, and the clamp keeps the prox arithmetic of the
# structured maps (sums of differences) finite.
_LOWEST_SHIFTED = -1e300


@_jit
def _compact_row(row, inv_gamma, buf, idx):
    """Copy the shifted, scaled non-masked scores of a row to ``buf`` (their positions
    to ``idx``); return their number, the largest score and whether a NaN was seen."""
    vmax, has_nan, masked = _row_stats(row)
    d = row.shape[0]
    if masked == 0:  # the common case, in a loop without branches
        for i in range(d):
            buf[i] = max((row[i] - vmax) * inv_gamma, _LOWEST_SHIFTED)
            idx[i] = i
        return d, vmax, has_nan
    m = 0
    for i in range(d):
        if row[i] != -np.inf:
            buf[m] = max((row[i] - vmax) * inv_gamma, _LOWEST_SHIFTED)
            idx[m] = i
            m += 1
    return m, vmax, has_nan


@_jit
def _tv_prox(y, n, lam, z, seg, knots, bounds):
    """1-D total-variation denoising, exact, linear time in the worst case.

    Solves argmin_z 1/2 ||z - y[:n]||^2 + lam * sum_i |z[i+1] - z[i]|. The solution
    is piecewise constant: it is written to ``z[:n]``, and the number of each
    position's segment (0, 1, ... from the left) to ``seg[:n]``.

    Condat's direct algorithm (IEEE SPL 2013) is the fastest on typical rows (about
    1.05 steps per element on random scores) but backtracks, and is quadratic on
    slowly varying rows (a ramp costs about n/20 steps per element at lam = 0.1).
    So it runs with a budget of 4n + 16 steps, which random rows stay well within,
    and a row that exhausts it is solved again by Johnson's dynamic programme, which
    is linear in the worst case (the proxTV "hybrid" strategy), block by block (see
    ``_tv_prox_dp_blocks``). ``knots`` (3 x (2n + 2)) and ``bounds`` (3 x n) are the
    programme's scratch.
    """
    if _tv_prox_condat(y, n, lam, z, seg, 4 * n + 16):
        return
    _tv_prox_dp_blocks(y, n, lam, z, seg, knots, bounds)


@_jit
def _tv_prox_near_top(y, n, lam, z, seg, work, knots, bounds, group_val, group_size):
    """``_tv_prox`` of ``y[:n]`` (largest value 0) where it can reach the sparsemax
    support, for fusedmax; returns the number of segments, and the number of those
    solved, whose values and sizes it writes to ``group_val`` and ``group_size``
    (float): the candidates for the support.

    At the optimum |z[i] - y[i]| <= 2 lam, and sparsemax's threshold is at least
    max(z) - 1 >= -1 - 2 lam, so a position with y[i] < -1 - 4 lam gets z[i] below
    it: weight 0. Neighbours more than 4 lam apart jump for sure, with dual +-lam
    (see ``_tv_prox_dp_blocks``), so the blocks between such jumps are independent
    problems: only the blocks holding a value >= -1 - 4 lam are solved (on random
    scores a small part of the row; on a trained model's peaked scores smaller
    still). The positions between them get z = -inf and one segment number per run,
    so neighbouring segments keep consecutive numbers (the lam gradient reads them).
    ``work`` (n values) holds a block with its end values moved by the jumps.
    """
    cut = -1.0 - 4.0 * lam
    jump = 4.0 * lam
    nseg = 0
    groups = 0
    done = 0  # positions [0, done) are finished
    i = 0
    while i < n:
        if y[i] < cut:
            i += 1
            continue
        lo = i
        while lo > done and abs(y[lo] - y[lo - 1]) <= jump:
            lo -= 1
        hi = i
        while hi < n - 1 and abs(y[hi + 1] - y[hi]) <= jump:
            hi += 1
        nseg = _fill_cold(z, seg, done, lo, nseg)  # the cold run before the block
        left = 0.0  # the end values move by lam towards the certain jumps
        if lo > 0:
            left = lam if y[lo] < y[lo - 1] else -lam
        right = 0.0
        if hi < n - 1:
            right = lam if y[hi + 1] > y[hi] else -lam
        # Blocks of one or two positions (most of them on random rows) in closed form:
        # a call costs more than solving them.
        if lo == hi:
            z[lo] = y[lo] + left + right
            seg[lo] = nseg
            nseg += 1
        elif hi == lo + 1:
            a = y[lo] + left
            b = y[hi] + right
            if abs(b - a) > 2.0 * lam:
                step = lam if b > a else -lam
                z[lo] = a + step
                z[hi] = b - step
                seg[lo] = nseg
                seg[hi] = nseg + 1
                nseg += 2
            else:
                z[lo] = z[hi] = 0.5 * (a + b)
                seg[lo] = seg[hi] = nseg
                nseg += 1
        else:
            m = hi + 1 - lo
            for j in range(m):
                work[j] = y[lo + j]
            work[0] += left
            work[m - 1] += right
            _tv_prox(work, m, lam, z[lo:], seg[lo:], knots, bounds)
            for j in range(lo, hi + 1):
                seg[j] += nseg
            nseg = seg[hi] + 1
        for j in range(lo, hi + 1):
            if j == lo or seg[j] != seg[j - 1]:
                group_val[groups] = z[j]
                group_size[groups] = 1.0
                groups += 1
            else:
                group_size[groups - 1] += 1.0
        done = hi + 1
        i = done
    nseg = _fill_cold(z, seg, done, n, nseg)
    return nseg, groups


@_jit
def _fill_cold(z, seg, start, stop, nseg):
    """Positions [start, stop) get z = -inf and one segment number, ``nseg``, if there
    are any; returns the next segment number."""
    if start >= stop:
        return nseg
    for j in range(start, stop):
        z[j] = -np.inf
        seg[j] = nseg
    return nseg + 1


@_jit
def _label_runs(z, n, seg):
    """seg[k]: the number of the run of equal consecutive values of z[:n] holding k."""
    label = 0
    seg[0] = 0
    for k in range(1, n):
        label += z[k] != z[k - 1]
        seg[k] = label


@_jit
def _tv_prox_dp_blocks(y, n, lam, z, seg, knots, bounds):
    """Johnson's programme on the blocks between certain jumps.

    Since |z[i] - y[i]| <= 2 lam at the optimum, neighbours more than 4 lam apart
    jump for sure, and the jump's dual is +-lam: each block between such jumps is an
    independent TV problem whose end values move by lam towards the jump (z[i] =
    y[i] - lam (s[i-1] - s[i]) with s the jump signs). Solving blocks apart keeps
    the programme's accumulated knot intercepts at the scale of one block: one score
    near -3e38 beside ordinary ones would otherwise swamp them in rounding.
    """
    adjusted = bounds[2]
    start = 0
    for i in range(n):
        if i < n - 1 and abs(y[i + 1] - y[i]) <= 4.0 * lam:
            continue
        for j in range(start, i + 1):
            adjusted[j] = y[j]
        if start > 0:  # the jump into the block from the left
            adjusted[start] += lam if y[start] < y[start - 1] else -lam
        if i < n - 1:  # the jump out of it to the right
            adjusted[i] += lam if y[i + 1] > y[i] else -lam
        m = i + 1 - start
        _tv_prox_dp(adjusted[start:], m, lam, z[start:], seg[start:], knots, bounds)
        start = i + 1
    _label_runs(z, n, seg)


@_jit
def _tv_prox_condat(y, n, lam, z, seg, budget):
    """Condat's direct algorithm (L. Condat, "A Direct Algorithm for 1D Total
    Variation Denoising", IEEE SPL 2013), one left-to-right sweep with backtracking.
    Returns False, with ``z`` and ``seg`` unfinished, after ``budget`` steps.

    The sweep records each finished segment as (end, value) in ``seg`` and ``z`` (the
    j-th segment at index j, never past its own start) and expands them from the
    right at the end: one store per segment inside the sweep instead of a fill loop,
    and the two jump directions share one branch."""
    nseg = 0
    k = 0  # current position
    k0 = 0  # start of the current segment
    kminus = 0  # last position where umin was lam
    kplus = 0  # last position where umax was -lam
    umin = lam  # dual variable bounds
    umax = -lam
    vmin = y[0] - lam  # bounds on the current segment's value
    vmax = y[0] + lam
    twolam = 2.0 * lam
    finished = False
    # One flat loop: numba (0.68) miscompiled the nested-while form of this sweep.
    for _ in range(budget):
        if k == n - 1:  # at the right end: close segments until all are out
            if umin < 0.0:
                seg[nseg] = kminus + 1
                z[nseg] = vmin
                nseg += 1
                k0 = kminus + 1
                k = k0
                kminus = k0
                vmin = y[k0]
                umin = lam
                umax = vmin + lam - vmax
            elif umax > 0.0:
                seg[nseg] = kplus + 1
                z[nseg] = vmax
                nseg += 1
                k0 = kplus + 1
                k = k0
                kplus = k0
                vmax = y[k0]
                umax = -lam
                umin = vmax - lam - vmin
            else:
                seg[nseg] = n
                z[nseg] = vmin + umin / (k - k0 + 1)
                nseg += 1
                finished = True
                break
            continue
        following = y[k + 1]
        down = umin + following - vmin < -lam  # a downward jump after kminus
        if down or umax + following - vmax > lam:  # or an upward one after kplus
            end = kminus + 1 if down else kplus + 1
            seg[nseg] = end
            z[nseg] = vmin if down else vmax
            nseg += 1
            k0 = end
            k = end
            kminus = end
            kplus = end
            first = y[end]
            vmin = first if down else first - twolam
            vmax = first + twolam if down else first
            umin = lam
            umax = -lam
        else:  # no jump: extend the segment
            umin += following - vmin
            umax += following - vmax
            k += 1
            if umin >= lam:
                kminus = k
                vmin += (umin - lam) / (kminus - k0 + 1)
                umin = lam
            if umax <= -lam:
                kplus = k
                vmax += (umax + lam) / (kplus - k0 + 1)
                umax = -lam
    if not finished:
        return False
    # Segment j covers [end of segment j - 1, seg[j]); from the right, each write
    # lands at or after index j, past the records still to be read.
    for j in range(nseg - 1, -1, -1):
        start = seg[j - 1] if j > 0 else 0
        stop = seg[j]
        value = z[j]
        for i in range(stop - 1, start - 1, -1):
            z[i] = value
            seg[i] = j
    return True


@_jit
def _tv_prox_dp(y, n, lam, z, seg, knots, bounds):
    """Johnson's dynamic programme for 1-D TV denoising (N. Johnson, "A Dynamic
    Programming Algorithm for the Fused Lasso and L0-Segmentation", JCGS 2013).

    Forward: the derivative D_k of the cost of the best z[:k+1] as a function of its
    last value is increasing and piecewise linear; its knots live in a deque
    (``knots[0]`` positions, ``knots[1]`` and ``knots[2]`` the changes of slope and
    intercept when a knot is crossed left to right). Minimising over the previous
    value clips D_k to [-lam, lam]: the clip points tm_k < tp_k (``bounds``) drop the
    knots outside them, and each knot is added and dropped once: O(n) in all cases.
    Backward: z[n-1] is the root of D_{n-1}, and z[k] = clip(z[k+1], tm_k, tp_k);
    fused positions copy their neighbour's value, so segments are runs of equal
    values exactly.
    """
    kx = knots[0]
    ka = knots[1]
    kb = knots[2]
    left = n + 1  # the knots are kx[left:right + 1]; each step adds one at each end
    right = n
    # D_0(b) = b - y[0]: left of the knots it is al * b + bl, right of them ar * b + br.
    al = 1.0
    bl = -y[0]
    ar = 1.0
    br = -y[0]
    for k in range(n - 1):
        a = al
        b = bl
        j = left
        while j <= right and a * kx[j] + b < -lam:
            a += ka[j]
            b += kb[j]
            j += 1
        low = (-lam - b) / a  # D_k(low) = -lam
        low_a = a
        low_b = b + lam
        a = ar
        b = br
        i = right
        while i >= j and a * kx[i] + b > lam:
            a -= ka[i]
            b -= kb[i]
            i -= 1
        high = (lam - b) / a  # D_k(high) = lam
        left = j - 1
        kx[left] = low
        ka[left] = low_a
        kb[left] = low_b
        right = i + 1
        kx[right] = high
        ka[right] = -a
        kb[right] = lam - b
        bounds[0, k] = low
        bounds[1, k] = high
        # D_{k+1} = clip(D_k, -lam, lam) + (b - y[k + 1])
        al = 1.0
        bl = -lam - y[k + 1]
        ar = 1.0
        br = lam - y[k + 1]
    a = al
    b = bl
    j = left
    while j <= right and a * kx[j] + b < 0.0:
        a += ka[j]
        b += kb[j]
        j += 1
    v = -b / a
    z[n - 1] = v
    for k in range(n - 2, -1, -1):
        v = min(max(v, bounds[0, k]), bounds[1, k])
        z[k] = v
    _label_runs(z, n, seg)


@_jit
def _sparsemax_of_groups(group_val, group_size, ngroups, cand_val, cand_size):
    """Sparsemax threshold of a vector made of ``group_size[j]`` copies of
    ``group_val[j]``."""
    vmax = -np.inf
    for j in range(ngroups):
        if group_val[j] > vmax:
            vmax = group_val[j]
    k = 0
    for j in range(ngroups):
        if group_val[j] > vmax - 1.0:
            cand_val[k] = group_val[j]
            cand_size[k] = group_size[j]
            k += 1
    return _michelot(cand_val, cand_size, k)


@_row_jit
def _fusedmax_row(row, out_row, aux_row, inv_gamma, lam, scratch, idx, seg, knots, bounds):
    """Write fusedmax(row * inv_gamma) to ``out_row`` and the group ids to ``aux_row``;
    return the number of segments of the prox (a run of positions that cannot reach
    the support counts as one; 0 for a special row)."""
    buf, z, work, cand_val, cand_size = scratch[0], scratch[1], scratch[2], scratch[3], scratch[4]
    d = row.shape[0]
    m, vmax, has_nan = _compact_row(row, inv_gamma, buf, idx)
    flag = _special_row(row, out_row, vmax, has_nan)
    if flag != NORMAL:
        aux_row[:] = flag  # NO_GRAD or NAN_ROW
        return 0
    nseg, groups = _tv_prox_near_top(buf, m, lam, z, seg, work, knots, bounds, cand_val, cand_size)
    tau = _sparsemax_of_groups(cand_val, cand_size, groups, cand_val, cand_size)
    if m == d:  # nothing masked: position j is kept position j
        for j in range(d):
            v = z[j] - tau
            out_row[j] = v if v > 0.0 else 0.0
            aux_row[j] = seg[j] if v > 0.0 else NO_GRAD
    else:
        out_row[:] = 0.0
        aux_row[:] = NO_GRAD
        for j in range(m):
            v = z[j] - tau
            if v > 0.0:
                out_row[idx[j]] = v
                aux_row[idx[j]] = seg[j]
    return nseg


@_jit
def fusedmax_forward(x, mask, out, aux, inv_gamma, lam, lo, hi):
    d = x.shape[1]
    scratch = np.empty((5, d))  # buf, z, work, cand_val, cand_size
    idx = np.empty(d, dtype=np.int64)
    seg = np.empty(d, dtype=np.int32)
    knots = np.empty((3, 2 * d + 2))
    bounds = np.empty((3, d))
    masked = np.empty(d)
    for r in range(lo, hi):
        if mask is None:
            _fusedmax_row(x[r], out[r], aux[r], inv_gamma, lam, scratch, idx, seg, knots, bounds)
        else:
            _masked_row(x, mask, r, masked)
            _fusedmax_row(masked, out[r], aux[r], inv_gamma, lam, scratch, idx, seg, knots, bounds)


@_jit
def _pool_adjacent_violators(v, n, block_sum, block_size):
    """Best non-increasing fit of ``v[:n]`` in least squares, as blocks (sum, size)
    from left to right. Returns the number of blocks."""
    nb = 0
    for i in range(n):
        block_sum[nb] = v[i]
        block_size[nb] = 1
        nb += 1
        # Merge while a block's mean exceeds the mean of the block before it.
        while nb > 1 and (
            block_sum[nb - 1] * block_size[nb - 2] > block_sum[nb - 2] * block_size[nb - 1]
        ):
            block_sum[nb - 2] += block_sum[nb - 1]
            block_size[nb - 2] += block_size[nb - 1]
            nb -= 1
    return nb


_INSERTION_SORT_MAX = 24
_THREE_PASS_RADIX_MAX = 4096


@_jit
def _insertion_sort_desc(vals, order, start, m, budget):
    """Sort ``order[:m]`` so that ``vals[order]`` is non-increasing; the first
    ``start`` entries are already in place. Linear on nearly sorted input. Gives up
    (returns False, ``order`` still a permutation) after ``budget`` moves."""
    moves = 0
    for i in range(max(start, 1), m):
        j = order[i]
        v = vals[j]
        k = i - 1
        while k >= 0 and vals[order[k]] < v:
            order[k + 1] = order[k]
            k -= 1
            moves += 1
        order[k + 1] = j
        if moves > budget:
            return False
    return True


@_jit
def _argsort_desc(vals, m, order, keys, spare, counts):
    """Indices that sort ``vals[:m]`` in non-increasing order, written to ``order``.

    Short rows use insertion sort. Longer ones use an LSD radix sort (8-bit digits)
    on the top 24 bits (rows of up to 4096 values) or 32 bits of an order-preserving
    integer image of each value, with the index in the low bits; values that share
    those bits are then put in exact order by a final insertion pass, which is
    linear when few are out of place. No allocation: all buffers come from the
    caller. Rows whose values mostly share their top bits (nearly equal scores, as an
    untrained model gives) would make that pass quadratic: after 8m moves it gives up
    and a merge sort finishes the row, so the worst case is O(m log m).
    """
    if m <= _INSERTION_SORT_MAX:
        for i in range(m):
            order[i] = i
        _insertion_sort_desc(vals, order, 0, m, m * m)
        return
    # Up to 4096 values, three passes over the top 24 bits (sign, exponent, 12
    # mantissa bits) of the key's 32: measured faster at every length from 64 to 4096
    # than four over all 32 (the insertion pass orders the few values that tie) and
    # than two over 16 (whose many ties cost the insertion pass more than a pass
    # saves). Longer rows have more ties in 24 bits: all four passes (at 1e5 values
    # three cost about twice as much).
    first = 1 if m <= _THREE_PASS_RADIX_MAX else 0
    counts[first:, :] = 0
    for i in range(m):
        bits = np.float64(vals[i]).view(np.int64)
        # Negative floats order backwards: flip all but the sign bit. Then negate so
        # that an ascending sort yields the values in descending order.
        bits = bits ^ ((bits >> 63) & np.int64(0x7FFFFFFFFFFFFFFF))
        digits = ~(bits >> 32) ^ np.int64(0x80000000)  # 32 bits, ascending = descending
        digits &= np.int64(0xFFFFFFFF)
        keys[i] = (digits << 32) | i
        for p in range(first, 4):
            counts[p, (digits >> (8 * p)) & 255] += 1
    source = keys
    target = spare
    for p in range(first, 4):
        total = 0
        for b in range(256):
            c = counts[p, b]
            counts[p, b] = total
            total += c
        shift = 32 + 8 * p
        for i in range(m):
            b = (source[i] >> shift) & 255
            target[counts[p, b]] = source[i]
            counts[p, b] += 1
        source, target = target, source
    for i in range(m):
        order[i] = source[i] & np.int64(0xFFFFFFFF)
    if not _insertion_sort_desc(vals, order, 1, m, 8 * m):
        _merge_sort_desc(vals, m, order, keys)


@_jit
def _merge_sort_desc(vals, m, order, spare):
    """Indices of ``vals[:m]`` in non-increasing order of value, ties in increasing
    order of index (the result of a stable argsort of ``-vals[:m]``), written to
    ``order``: a bottom-up merge sort, O(m log m) in all cases, with ``spare`` (m
    entries) as its buffer. No allocation, so the CUDA kernels can use it too."""
    for i in range(m):
        order[i] = i
    source = order
    target = spare
    in_order = True  # whether the sorted runs are in ``order`` (else in ``spare``)
    width = 1
    while width < m:
        for lo in range(0, m, 2 * width):
            mid = min(lo + width, m)
            hi = min(lo + 2 * width, m)
            i = lo
            j = mid
            for k in range(lo, hi):
                # The right run goes first only when strictly larger: ties keep their order.
                if j < hi and (i == mid or vals[source[j]] > vals[source[i]]):
                    target[k] = source[j]
                    j += 1
                else:
                    target[k] = source[i]
                    i += 1
        source, target = target, source
        in_order = not in_order
        width *= 2
    if not in_order:
        for i in range(m):
            order[i] = spare[i]


@_jit
def _top_first(vals, idx, m, cut):
    """Reorder ``vals[:m]`` and ``idx[:m]`` together so that the values >= ``cut``
    come first; return their number.

    For oscarmax, with cut = -1 - lam (m - 1) and the largest value 0, the fit of
    these values alone gives the support exactly. A value below cut, at rank k,
    enters the fit as itself minus lam (m - 1 - k), so below cut; every block of the
    full fit that holds one has a mean at most max(cut, the means of later blocks of
    the top values' fit), so it cannot merge into a block of that fit with a mean
    above cut: those keep their values. And the first block's mean is at least the
    largest value's, -lam (m - 1), so the sparsemax threshold (at least that mean
    minus 1) is at least cut: blocks with a mean at or below cut are outside the
    support, whichever values they hold.
    """
    top = 0
    for i in range(m):  # a count first: on long rows every value is often kept
        top += vals[i] >= cut
    if top == m:
        return m
    top = 0
    for i in range(m):
        if vals[i] >= cut:
            vals[top], vals[i] = vals[i], vals[top]
            idx[top], idx[i] = idx[i], idx[top]
            top += 1
    return top


@_row_jit
def _oscarmax_row(row, out_row, aux_row, inv_gamma, lam, scratch, indices, counts):
    """Write oscarmax(row * inv_gamma) to ``out_row`` and the group ids to ``aux_row``;
    return the number of kept positions (0 for a special row)."""
    buf, shifted, block_sum = scratch[0], scratch[1], scratch[2]
    block_size, cand_val, cand_size = scratch[3], scratch[4], scratch[5]
    idx, order, keys, spare = indices[0], indices[1], indices[2], indices[3]
    aux_row[:] = NO_GRAD
    m, vmax, has_nan = _compact_row(row, inv_gamma, buf, idx)
    flag = _special_row(row, out_row, vmax, has_nan)
    if flag != NORMAL:
        if flag == NAN_ROW:
            aux_row[:] = NAN_ROW
        return 0
    out_row[:] = 0.0
    # Signed OWL prox: sort descending, subtract lam * (m - k) from the k-th
    # largest (k = 1..m), fit a non-increasing sequence. Only the values at or above
    # cut = -1 - lam (m - 1) are sorted and fitted (``_top_first``).
    top = _top_first(buf, idx, m, -1.0 - lam * (m - 1))
    _argsort_desc(buf, top, order, keys, spare, counts)
    for k in range(top):
        shifted[k] = buf[order[k]] - lam * (m - 1 - k)
    nb = _pool_adjacent_violators(shifted, top, block_sum, block_size)
    for b in range(nb):
        block_sum[b] /= block_size[b]  # block means: the prox values
    tau = _sparsemax_of_groups(block_sum, block_size, nb, cand_val, cand_size)
    start = 0
    for b in range(nb):
        v = block_sum[b] - tau
        if v <= 0.0:
            break  # blocks are sorted: the rest is outside the support too
        for k in range(start, start + int(block_size[b])):
            out_row[idx[order[k]]] = v
            aux_row[idx[order[k]]] = b
        start += int(block_size[b])
    return m


@_jit
def oscarmax_forward(x, mask, out, aux, inv_gamma, lam, lo, hi):
    d = x.shape[1]
    # buf, shifted, block_sum, block_size, cand_val, cand_size
    scratch = np.empty((6, d))
    indices = np.empty((4, d), dtype=np.int64)  # idx, order, keys, spare
    counts = np.empty((4, 256), dtype=np.int64)
    masked = np.empty(d)
    for r in range(lo, hi):
        if mask is None:
            _oscarmax_row(x[r], out[r], aux[r], inv_gamma, lam, scratch, indices, counts)
        else:
            _masked_row(x, mask, r, masked)
            _oscarmax_row(masked, out[r], aux[r], inv_gamma, lam, scratch, indices, counts)


@_jit
def grouped_backward(y, aux, g, grad, inv_gamma, param, lo, hi):
    """Backward of sparsemax composed with a prox whose Jacobian averages over
    groups: the sparsemax VJP, then its mean over each group (Niculae & Blondel 2017,
    section 3)."""
    d = y.shape[1]
    _grouped_backward_rows(aux, g, grad, inv_gamma, lo, hi, np.empty(d), np.empty(d))


@_jit
def _grouped_backward_rows(aux, g, grad, inv_gamma, lo, hi, group_sum, group_size):
    """``grouped_backward`` on rows ``[lo, hi)``, with its per-group sums and sizes in
    ``group_sum`` and ``group_size`` (d entries each, from the caller)."""
    d = aux.shape[1]
    for r in range(lo, hi):
        if d > 0 and aux[r, 0] == NAN_ROW:
            grad[r, :] = np.nan
            continue
        for i in range(d):
            gid = aux[r, i]
            if gid >= 0:
                group_sum[gid] = 0.0
                group_size[gid] = 0.0
        total = 0.0
        size = 0
        for i in range(d):
            gid = aux[r, i]
            if gid >= 0:
                group_sum[gid] += g[r, i]
                group_size[gid] += 1.0
                total += g[r, i]
                size += 1
        mean = total / size if size > 0 else 0.0
        for i in range(d):
            gid = aux[r, i]
            if gid >= 0:
                grad[r, i] = (group_sum[gid] / group_size[gid] - mean) * inv_gamma
            else:
                grad[r, i] = 0.0


# --------------------------------------------------------------------- sq-pnorm-max


@_jit
def _power(v, e):
    """v ** e, with the exponents of p = 1.5 (the paper's choice) done without pow."""
    if e == 1.0:
        return v
    if e == 2.0:
        return v * v
    if e == 0.5:
        return math.sqrt(v)
    if e == 1.5:
        return v * math.sqrt(v)
    return v**e


@_jit
def _pnorm_terms(vals, k, tau, q):
    """For t_i = vals[i] - tau > 0 and u_i = t_i ** q: sum u_i, sum u_i t_i and
    sum u_i / t_i."""
    s_u = 0.0
    s_ut = 0.0
    s_udt = 0.0
    for i in range(k):
        t = vals[i] - tau
        if t > 0.0:
            u_dt = _power(t, q - 1.0)  # t for p = 1.5: no division, no pow
            u = u_dt * t
            s_u += u
            s_ut += u * t
            s_udt += u_dt
    return s_u, s_ut, s_udt


@_jit
def _pnorm_threshold(vals, k, vmax, p):
    """Root tau of ||u||_p^(p-2) * sum(u) = 1 with u_i = (vals_i - tau)_+^(1/(p-1)),
    by Newton's method on the log of the left side, safeguarded by bisection on the
    bracket [vmax - 1, vmax]."""
    q = 1.0 / (p - 1.0)
    lo = vmax - 1.0
    hi = vmax
    tau = lo
    for _ in range(200):
        s_u, s_ut, s_udt = _pnorm_terms(vals, k, tau, q)
        # F(tau) = (p-2)/p * log(sum u^p) + log(sum u), decreasing in tau.
        f = (p - 2.0) / p * math.log(s_ut) + math.log(s_u)
        # f is a log: 1e-15 is a relative error in the total mass, which the caller
        # renormalises; asking for less makes the last steps bounce between ulps.
        if abs(f) <= 1e-15:
            return tau
        if f > 0.0:
            lo = tau
        else:
            hi = tau
        slope = -((p - 2.0) / (p - 1.0)) * s_u / s_ut - q * s_udt / s_u
        new_tau = tau - f / slope
        if not (lo < new_tau < hi):
            new_tau = 0.5 * (lo + hi)
        if abs(new_tau - tau) <= 4e-16 * (abs(tau) + 1.0):
            return new_tau
        tau = new_tau
    return tau


@_row_jit
def _sq_pnorm_max_row(row, out_row, inv_gamma, p, vals):
    """Write sq-pnorm-max(row * inv_gamma) to ``out_row``; return the row flag."""
    vmax, has_nan, _ = _row_stats(row)
    flag = _special_row(row, out_row, vmax, has_nan)
    if flag != NORMAL:
        return flag
    d = row.shape[0]
    q = 1.0 / (p - 1.0)
    k = 0
    for i in range(d):
        v = (row[i] - vmax) * inv_gamma
        if v > -1.0:
            vals[k] = v
            k += 1
    tau = _pnorm_threshold(vals, k, 0.0, p)
    s_u, s_ut, _ = _pnorm_terms(vals, k, tau, q)
    scale = s_ut ** ((p - 2.0) / p)  # ||u||_p^(p-2)
    total = 0.0
    for i in range(d):
        t = (row[i] - vmax) * inv_gamma - tau
        if t > 0.0:
            u = _power(t, q)
            out_row[i] = scale * u
            total += scale * u
        else:
            out_row[i] = 0.0
    # Renormalise away the last rounding errors of the root.
    for i in range(d):
        out_row[i] /= total
    return NORMAL


@_jit
def sq_pnorm_max_forward(x, mask, out, aux, inv_gamma, p, lo, hi):
    d = x.shape[1]
    vals = np.empty(d)
    masked = np.empty(d)
    for r in range(lo, hi):
        if mask is None:
            aux[r, 0] = _sq_pnorm_max_row(x[r], out[r], inv_gamma, p, vals)
        else:
            _masked_row(x, mask, r, masked)
            aux[r, 0] = _sq_pnorm_max_row(masked, out[r], inv_gamma, p, vals)


@_jit
def sq_pnorm_max_backward(y, aux, g, grad, inv_gamma, p, lo, hi):
    """J g with J = H^-1 - H^-1 1 1^T H^-1 / (1^T H^-1 1) on the support, where
    H = diag(a) + c w w^T is the Hessian of 1/2 ||y||_p^2 (Niculae & Blondel 2017, Prop. 1),
    inverted with Sherman-Morrison."""
    d = y.shape[1]
    for r in range(lo, hi):
        if _backward_special(aux[r, 0], grad[r]):
            continue
        norm_p = 0.0
        for i in range(d):
            if y[r, i] > 0.0:
                norm_p += _power(y[r, i], p)
        norm_p = norm_p ** (1.0 / p)
        c = (2.0 - p) * norm_p ** (2.0 - 2.0 * p)
        scale = 1.0 / ((p - 1.0) * norm_p ** (2.0 - p))
        # With w_i = y_i^(p-1): 1/a_i = scale * y_i^(2-p) and w_i / a_i = scale * y_i.
        w_a_w = 0.0
        w_a_g = 0.0
        w_a_1 = 0.0
        one_a_g = 0.0
        one_a_1 = 0.0
        for i in range(d):
            yi = y[r, i]
            if yi > 0.0:
                inv_a = scale * _power(yi, 2.0 - p)
                w_a = scale * yi
                w_a_w += w_a * _power(yi, p - 1.0)
                w_a_g += w_a * g[r, i]
                w_a_1 += w_a
                one_a_g += inv_a * g[r, i]
                one_a_1 += inv_a
        denom = 1.0 + c * w_a_w
        sum_q = one_a_g - c * w_a_1 * w_a_g / denom  # 1^T H^-1 g
        sum_r = one_a_1 - c * w_a_1 * w_a_1 / denom  # 1^T H^-1 1
        ratio = sum_q / sum_r
        for i in range(d):
            yi = y[r, i]
            if yi > 0.0:
                inv_a = scale * _power(yi, 2.0 - p)
                w_a = scale * yi
                q_i = inv_a * g[r, i] - c * w_a * w_a_g / denom
                r_i = inv_a - c * w_a * w_a_1 / denom
                grad[r, i] = (q_i - r_i * ratio) * inv_gamma
            else:
                grad[r, i] = 0.0


# ------------------------------------------------------------------------- entmax15


@_jit
def _entmax15_threshold(vals, k, vmax):
    """Root tau of sum_i (vals_i - tau)_+^2 = 1 (Peters et al. 2019, alpha = 1.5).

    Newton's method from tau = vmax - 1 approaches the root from below (the function
    is convex and decreasing), so the support {vals > tau} always contains the true
    one. Each step checks whether the current support gives the exact closed-form
    root; that ends the search as soon as the support is right.
    """
    tau = vmax - 1.0
    for _ in range(200):
        size = 0
        total = 0.0
        outside_max = -np.inf
        for i in range(k):
            if vals[i] > tau:
                size += 1
                total += vals[i]
            elif vals[i] > outside_max:
                outside_max = vals[i]
        mean = total / size
        spread = 0.0
        inside_min = np.inf
        for i in range(k):
            if vals[i] > tau:
                spread += (vals[i] - mean) ** 2
                inside_min = min(inside_min, vals[i])
        if spread <= 1.0:
            exact = mean - math.sqrt((1.0 - spread) / size)
            if inside_min > exact >= outside_max:
                return exact
        f = spread + size * (mean - tau) ** 2 - 1.0  # sum (vals - tau)_+^2 - 1
        new_tau = tau + f / (2.0 * size * (mean - tau))
        if new_tau <= tau:
            return tau
        tau = new_tau
    return tau


@_row_jit
def _entmax15_row(row, out_row, inv_gamma, vals):
    """Write 1.5-entmax(row * inv_gamma) to ``out_row``; return the row flag."""
    vmax, has_nan, _ = _row_stats(row)
    flag = _special_row(row, out_row, vmax, has_nan)
    if flag != NORMAL:
        return flag
    half = 0.5 * inv_gamma  # entmax15(x) thresholds x / 2
    k = 0
    for i in range(row.shape[0]):
        v = (row[i] - vmax) * half
        if v > -1.0:
            vals[k] = v
            k += 1
    tau = _entmax15_threshold(vals, k, 0.0)
    for i in range(row.shape[0]):
        t = (row[i] - vmax) * half - tau
        out_row[i] = t * t if t > 0.0 else 0.0
    return NORMAL


@_jit
def entmax15_forward(x, mask, out, aux, inv_gamma, param, lo, hi):
    d = x.shape[1]
    vals = np.empty(d)
    masked = np.empty(d)
    for r in range(lo, hi):
        if mask is None:
            aux[r, 0] = _entmax15_row(x[r], out[r], inv_gamma, vals)
        else:
            _masked_row(x, mask, r, masked)
            aux[r, 0] = _entmax15_row(masked, out[r], inv_gamma, vals)


@_jit
def entmax15_backward(y, aux, g, grad, inv_gamma, param, lo, hi):
    d = y.shape[1]
    for r in range(lo, hi):
        if _backward_special(aux[r, 0], grad[r]):
            continue
        s_g = 0.0
        s_sum = 0.0
        for i in range(d):
            if y[r, i] > 0.0:
                s = math.sqrt(y[r, i])
                s_g += s * g[r, i]
                s_sum += s
        ratio = s_g / s_sum
        for i in range(d):
            if y[r, i] > 0.0:
                s = math.sqrt(y[r, i])
                grad[r, i] = s * (g[r, i] - ratio) * inv_gamma
            else:
                grad[r, i] = 0.0


# ------------------------------------------------------------------------- dispatch

FORWARD = {
    SPARSEMAX: sparsemax_forward,
    FUSEDMAX: fusedmax_forward,
    OSCARMAX: oscarmax_forward,
    SQ_PNORM_MAX: sq_pnorm_max_forward,
    ENTMAX15: entmax15_forward,
}
BACKWARD = {
    SPARSEMAX: sparsemax_backward,
    FUSEDMAX: grouped_backward,
    OSCARMAX: grouped_backward,
    SQ_PNORM_MAX: sq_pnorm_max_backward,
    ENTMAX15: entmax15_backward,
}


# numba cannot cache a parallel function that takes a kernel as an argument (or calls
# numba.get_num_threads), so the parallel drivers select the kernel by its number and
# take the number of chunks, one per thread.
@_jit(parallel=True)
def forward_parallel(kind, chunks, x, mask, out, aux, inv_gamma, param):
    n = x.shape[0]
    for c in prange(chunks):
        lo = c * n // chunks
        hi = (c + 1) * n // chunks
        if kind == SPARSEMAX:
            sparsemax_forward(x, mask, out, aux, inv_gamma, param, lo, hi)
        elif kind == FUSEDMAX:
            fusedmax_forward(x, mask, out, aux, inv_gamma, param, lo, hi)
        elif kind == OSCARMAX:
            oscarmax_forward(x, mask, out, aux, inv_gamma, param, lo, hi)
        elif kind == SQ_PNORM_MAX:
            sq_pnorm_max_forward(x, mask, out, aux, inv_gamma, param, lo, hi)
        else:
            entmax15_forward(x, mask, out, aux, inv_gamma, param, lo, hi)


@_jit(parallel=True)
def backward_parallel(kind, chunks, y, aux, g, grad, inv_gamma, param):
    n = y.shape[0]
    for c in prange(chunks):
        lo = c * n // chunks
        hi = (c + 1) * n // chunks
        if kind == SPARSEMAX:
            sparsemax_backward(y, aux, g, grad, inv_gamma, param, lo, hi)
        elif kind in STRUCTURED:
            grouped_backward(y, aux, g, grad, inv_gamma, param, lo, hi)
        elif kind == SQ_PNORM_MAX:
            sq_pnorm_max_backward(y, aux, g, grad, inv_gamma, param, lo, hi)
        else:
            entmax15_backward(y, aux, g, grad, inv_gamma, param, lo, hi)


# ------------------------------------------------------- learnable lam (tensor lam)


@_jit
def structured_forward_lams(kind, x, mask, out, aux, counts, inv_gamma, lams, lo, hi):
    """fusedmax or oscarmax with one lam per row (``lams``, float64): the forward of a
    learnable lam. ``counts[r]`` receives what the lam gradient needs besides the
    group ids: the number of TV segments (fusedmax) or of kept positions (oscarmax)."""
    d = x.shape[1]
    masked = np.empty(d)
    if kind == FUSEDMAX:
        scratch = np.empty((5, d))
        idx = np.empty(d, dtype=np.int64)
        seg = np.empty(d, dtype=np.int32)
        knots = np.empty((3, 2 * d + 2))
        bounds = np.empty((3, d))
        for r in range(lo, hi):
            # No *args: numba cannot inline a call that unpacks them.
            if mask is None:
                counts[r] = _fusedmax_row(
                    x[r], out[r], aux[r], inv_gamma, lams[r], scratch, idx, seg, knots, bounds
                )
            else:
                _masked_row(x, mask, r, masked)
                counts[r] = _fusedmax_row(
                    masked, out[r], aux[r], inv_gamma, lams[r], scratch, idx, seg, knots, bounds
                )
    else:
        scratch = np.empty((6, d))
        indices = np.empty((4, d), dtype=np.int64)
        sort_counts = np.empty((4, 256), dtype=np.int64)
        for r in range(lo, hi):
            if mask is None:
                counts[r] = _oscarmax_row(
                    x[r], out[r], aux[r], inv_gamma, lams[r], scratch, indices, sort_counts
                )
            else:
                _masked_row(x, mask, r, masked)
                counts[r] = _oscarmax_row(
                    masked, out[r], aux[r], inv_gamma, lams[r], scratch, indices, sort_counts
                )


@_jit
def structured_lam_grad(kind, y, aux, counts, g, grad_lam, lo, hi):
    """d<g, y>/d lam per row for fusedmax or oscarmax, from the forward's output ``y``,
    group ids ``aux`` and ``counts``. With S the support and m_S(g) its mean of g, the
    sparsemax Jacobian gives sum_{i in S} (g_i - m_S(g)) dz_i/dlam, z the prox:

    * fusedmax: a TV segment G of value z_G = mean_G(x) - lam (s_L + s_R) / |G|, with
      s_L, s_R the signs of z_G minus its neighbouring segments' values (0 at an end;
      +1 against a segment outside the support, which lies below the threshold);
    * oscarmax: a block of sorted ranks k (0 = largest) of the m kept positions has
      value mean(x_(k) - lam (m - 1 - k)), so dz/dlam = -(m - 1 - its mean rank)."""
    d = y.shape[1]
    group_sum = np.empty(d)
    group_size = np.empty(d)
    group_y = np.empty(d)
    for r in range(lo, hi):
        nb = 0
        for i in range(d):
            b = aux[r, i]
            if b >= 0:
                nb = max(nb, b + 1)
        total = 0.0
        size = 0
        for b in range(nb):
            group_sum[b] = 0.0
            group_size[b] = 0.0
            group_y[b] = np.nan  # a segment outside the support
        for i in range(d):
            b = aux[r, i]
            if b >= 0:
                group_sum[b] += g[r, i]
                group_size[b] += 1.0
                group_y[b] = y[r, i]
                total += g[r, i]
                size += 1
        grad = 0.0
        if size > 0:
            mean = total / size
            start = 0.0
            for b in range(nb):
                if group_size[b] == 0.0:  # fusedmax: a segment outside the support
                    continue
                if kind == FUSEDMAX:
                    sides = 0.0
                    for neighbour in (b - 1, b + 1):
                        if 0 <= neighbour < counts[r]:
                            other = group_y[neighbour] if neighbour < nb else np.nan
                            sides += 1.0 if other != other else np.sign(group_y[b] - other)
                    dz = -sides / group_size[b]
                else:
                    rank = start + 0.5 * (group_size[b] - 1.0)
                    dz = -(counts[r] - 1.0 - rank)
                    start += group_size[b]
                grad += (group_sum[b] - group_size[b] * mean) * dz
        grad_lam[r] = grad
