"""Native CUDA kernels (numba) for the regularized attention mappings.

``regattn.functional`` sends CUDA tensors here (``try_forward``/``try_backward``):
the scores, the mask, the outputs and the backward's saved state stay on the device,
every kernel runs on torch's current stream, and no call copies to the host or waits
for the device. If the kernels cannot run in this process (no numba CUDA target, no
NVVM to compile with, a launch that fails), the first failure is reported by one
warning and every later call takes the CPU path of ``regattn.functional``.

Design: one thread per row
--------------------------
Each thread computes one attention distribution, with the very row functions of the
CPU kernels (``regattn._cpu._sparsemax_row``, ``_fusedmax_row``, ``_oscarmax_row``,
``_sq_pnorm_max_row``, ``_entmax15_row``, ``_masked_row``) and the CPU backward
functions on the one-row range ``[r, r + 1)``: numba compiles an ``@njit`` function
called from a CUDA kernel as a device function for the CUDA target, so each
algorithm (Michelot's threshold, Condat's TV sweep with Johnson's dynamic programme
as its linear-time fallback, the radix argsort and the pool-adjacent-violators fit
of the OWL prox, the safeguarded Newton roots of sq-pnorm-max and 1.5-entmax) has
one source for both targets, and the GPU keeps the CPU's exact algorithms, edge-case
contracts (masks, -inf, +inf, NaN, huge scores, empty rows) and float64 internal
arithmetic. Attention rows are short (tens to a few thousand scores) and the TV
prox, the sort and the PAV fit are sequential sweeps, so a row per thread is the
natural unit; a block-per-row design would need a different algorithm per map.

Sharing took two behaviour-preserving edits of ``regattn._cpu`` (the CPU results
are bit-identical): the argsort's fallback for rows of nearly equal scores is a
merge sort into a buffer passed in (``_merge_sort_desc``, the same permutation as
numpy's stable argsort it replaces, which the CUDA target cannot compile), and the
grouped backward takes its two scratch rows from the caller
(``_grouped_backward_rows``), since a device function cannot allocate. Nothing is
CUDA-specific but the kernel shells below and the per-thread glue functions
(``_*_thread``), which pick a thread's scratch rows and load its row of scores into
one of them in float64, with ``-inf`` at masked positions, as the CPU kernels do
for masked rows (see ``_load_row``): float32 converts to float64 exactly, so the
row functions compute the same values.

Scratch memory
--------------
The row functions take their scratch arrays from the caller; here they are device
tensors allocated per call (torch's caching allocator: no cudaMalloc in steady
state, no synchronisation), indexed (k, d, rows): thread r uses
``scratch[:, :, r]``. On the device the row index is innermost in memory, so the
threads of a warp, which walk their rows in step, touch consecutive addresses
(coalesced accesses). Per score, sparsemax uses 24 bytes, fusedmax 132 (its knot
deque is 2d + 2 long), oscarmax 88 plus 4 KiB per row (the radix counts),
sq-pnorm-max and 1.5-entmax 16, the grouped backward 16.

Performance notes
-----------------
* Rows of any length are correct. A thread per row fills the GPU when there are
  many rows (tens of thousands: batch x heads x queries); long rows with few of them
  (e.g. 1024 x 4096) leave most of the device idle and make each thread walk a long
  row with float64 arithmetic. The strategy for those is a cooperative kernel per
  row (a block reducing the max and Michelot's sums in shared memory, a parallel
  sort for oscarmax), keeping the sequential TV sweep per row; it needs a separate
  implementation per map and is not done here.
* float64 arithmetic is fast on data-centre GPUs (A100, H100) and slow on consumer
  ones (1/32 or 1/64 of float32); it is what keeps the results equal to the CPU's.
* A numba launch costs tens of microseconds of host time (argument conversion),
  which dominates small calls such as a decoder step.
* The GPU may contract a * b + c into a fused multiply-add and uses libdevice's
  pow and log, so results agree with the CPU kernels to rounding, not bitwise.

Testing without a GPU
---------------------
``launch_forward``/``launch_backward``, and the torch-facing ``kernel_forward`` and
``kernel_backward`` above them, take torch tensors: on a CUDA device they launch the
compiled kernels; on the CPU (only tests call them so) the same kernels run in
numba's CUDA simulator, which executes the kernel shells as Python, one thread per
row, in process and beside the ordinary CPU kernels. The simulator hands a kernel
wrapped numpy arrays that compiled functions cannot take, so its copy of each shell
(``_on_host``) unwraps them and runs the thread function as Python; the row
functions it calls run compiled for the CPU. The simulator lays each thread's
scratch out contiguously (``_scratch``), the same indexing with other strides, so
that the row functions see the argument types of the CPU kernels and reuse their
compiled code instead of compiling each algorithm again. That the thread functions and shells
compile for the CUDA target is checked by compiling them to PTX (tests/test_gpu.py,
where numba-cuda and NVVM are installed).

Requirements
------------
numba's CUDA target with NVVM: the extra ``cuda`` (``pip install 'regattn[cuda]'``)
installs numba-cuda, which finds NVVM and the CUDA libraries in NVIDIA's wheels;
numba's own built-in target (deprecated) needs a CUDA toolkit on the machine.
Without them the first CUDA call warns and the CPU kernels compute.
"""

import types
import warnings

import numba
import torch

from . import _cpu
from . import functional as F
from ._cpu import (
    ENTMAX15,
    FUSEDMAX,
    NO_GRAD,
    OSCARMAX,
    SPARSEMAX,
    SQ_PNORM_MAX,
    STRUCTURED,
)

_jit = _cpu._jit

# numba.cuda, imported on first use (``_load``): importing it costs tens of ms and
# needs nothing on a CPU-only machine until a kernel runs. The kernel shells refer
# to it by this global name, which is also what lets the simulator swap in its own
# cuda module while it runs them.
cuda = None

# Threads per block: the kernels are register-heavy (fusedmax most), and small
# blocks spread a few rows (a decoder step) over more multiprocessors.
_THREADS = 64


# ------------------------------------------------------------------ thread functions


@_jit
def _load_row(x, mask, r, row):
    """Row r of the scores, in float64, with -inf at masked positions (as
    ``_cpu._masked_row`` makes the masked rows of the CPU kernels).

    The row functions see the same values as on the CPU (float32 converts to float64
    exactly), so the results are the same; they are compiled for this one row type
    only, whatever the scores' dtype and strides; and on the device they read the
    row from scratch memory laid out for coalesced access."""
    if mask is None:
        for i in range(x.shape[1]):
            row[i] = x[r, i]
    else:
        _cpu._masked_row(x, mask, r, row)


@_jit
def _sparsemax_thread(r, x, mask, out, aux, inv_gamma, scratch):
    """Row r of sparsemax (``_cpu.sparsemax_forward``): scratch rows row, vals,
    counts (all ones)."""
    row, vals, counts = scratch[0, :, r], scratch[1, :, r], scratch[2, :, r]
    for i in range(x.shape[1]):
        counts[i] = 1.0
    _load_row(x, mask, r, row)
    aux[r, 0] = _cpu._sparsemax_row(row, out[r], inv_gamma, vals, counts)


@_jit
def _fusedmax_thread(r, x, mask, out, aux, inv_gamma, lam, scratch, knots, idx, seg):
    """Row r of fusedmax (``_cpu.fusedmax_forward``): scratch rows row, then buf, z,
    work, cand_val, cand_size (the row function's scratch), then bounds (3)."""
    row = scratch[0, :, r]
    _load_row(x, mask, r, row)
    _cpu._fusedmax_row(
        row, out[r], aux[r], inv_gamma, lam, scratch[1:6, :, r], idx[:, r], seg[:, r],
        knots[:, :, r], scratch[6:9, :, r],
    )  # fmt: skip


@_jit
def _oscarmax_thread(r, x, mask, out, aux, inv_gamma, lam, scratch, indices, counts):
    """Row r of oscarmax (``_cpu.oscarmax_forward``): scratch rows row, then buf,
    shifted, block_sum, block_size, cand_val, cand_size (the row function's scratch);
    index rows idx, order, keys, spare; the radix sort's counts."""
    row = scratch[0, :, r]
    _load_row(x, mask, r, row)
    _cpu._oscarmax_row(
        row, out[r], aux[r], inv_gamma, lam, scratch[1:7, :, r], indices[:, :, r],
        counts[:, :, r],
    )  # fmt: skip


@_jit
def _sq_pnorm_max_thread(r, x, mask, out, aux, inv_gamma, p, scratch):
    """Row r of sq-pnorm-max (``_cpu.sq_pnorm_max_forward``): scratch rows row, vals."""
    row, vals = scratch[0, :, r], scratch[1, :, r]
    _load_row(x, mask, r, row)
    aux[r, 0] = _cpu._sq_pnorm_max_row(row, out[r], inv_gamma, p, vals)


@_jit
def _entmax15_thread(r, x, mask, out, aux, inv_gamma, scratch):
    """Row r of 1.5-entmax (``_cpu.entmax15_forward``): scratch rows row, vals."""
    row, vals = scratch[0, :, r], scratch[1, :, r]
    _load_row(x, mask, r, row)
    aux[r, 0] = _cpu._entmax15_row(row, out[r], inv_gamma, vals)


@_jit
def _sparsemax_backward_thread(r, y, aux, g, grad, inv_gamma):
    """Row r of the sparsemax backward (``_cpu.sparsemax_backward`` on one row)."""
    _cpu.sparsemax_backward(y, aux, g, grad, inv_gamma, 0.0, r, r + 1)


@_jit
def _sq_pnorm_max_backward_thread(r, y, aux, g, grad, inv_gamma, p):
    """Row r of the sq-pnorm-max backward (``_cpu.sq_pnorm_max_backward``)."""
    _cpu.sq_pnorm_max_backward(y, aux, g, grad, inv_gamma, p, r, r + 1)


@_jit
def _entmax15_backward_thread(r, y, aux, g, grad, inv_gamma):
    """Row r of the 1.5-entmax backward (``_cpu.entmax15_backward``)."""
    _cpu.entmax15_backward(y, aux, g, grad, inv_gamma, 0.0, r, r + 1)


@_jit
def _grouped_backward_thread(r, aux, g, grad, inv_gamma, scratch):
    """Row r of the fusedmax / oscarmax backward: scratch rows group_sum, group_size."""
    group_sum, group_size = scratch[0, :, r], scratch[1, :, r]
    _cpu._grouped_backward_rows(aux, g, grad, inv_gamma, r, r + 1, group_sum, group_size)


# --------------------------------------------------------------------- kernel shells
# One thread per row. Each shell calls one thread function by its global name (the
# simulator's copy of a shell replaces that name, see ``_on_host``).


def _sparsemax_kernel(x, mask, out, aux, inv_gamma, param, scratch):
    r = cuda.grid(1)
    if r < x.shape[0]:
        _sparsemax_thread(r, x, mask, out, aux, inv_gamma, scratch)


def _fusedmax_kernel(x, mask, out, aux, inv_gamma, lam, scratch, knots, idx, seg):
    r = cuda.grid(1)
    if r < x.shape[0]:
        _fusedmax_thread(r, x, mask, out, aux, inv_gamma, lam, scratch, knots, idx, seg)


def _oscarmax_kernel(x, mask, out, aux, inv_gamma, lam, scratch, indices, counts):
    r = cuda.grid(1)
    if r < x.shape[0]:
        _oscarmax_thread(r, x, mask, out, aux, inv_gamma, lam, scratch, indices, counts)


def _sq_pnorm_max_kernel(x, mask, out, aux, inv_gamma, p, scratch):
    r = cuda.grid(1)
    if r < x.shape[0]:
        _sq_pnorm_max_thread(r, x, mask, out, aux, inv_gamma, p, scratch)


def _entmax15_kernel(x, mask, out, aux, inv_gamma, param, scratch):
    r = cuda.grid(1)
    if r < x.shape[0]:
        _entmax15_thread(r, x, mask, out, aux, inv_gamma, scratch)


def _sparsemax_backward_kernel(y, aux, g, grad, inv_gamma, param):
    r = cuda.grid(1)
    if r < y.shape[0]:
        _sparsemax_backward_thread(r, y, aux, g, grad, inv_gamma)


def _grouped_backward_kernel(y, aux, g, grad, inv_gamma, param, scratch):
    r = cuda.grid(1)
    if r < y.shape[0]:
        _grouped_backward_thread(r, aux, g, grad, inv_gamma, scratch)


def _sq_pnorm_max_backward_kernel(y, aux, g, grad, inv_gamma, p):
    r = cuda.grid(1)
    if r < y.shape[0]:
        _sq_pnorm_max_backward_thread(r, y, aux, g, grad, inv_gamma, p)


def _entmax15_backward_kernel(y, aux, g, grad, inv_gamma, param):
    r = cuda.grid(1)
    if r < y.shape[0]:
        _entmax15_backward_thread(r, y, aux, g, grad, inv_gamma)


FORWARD = {
    SPARSEMAX: _sparsemax_kernel,
    FUSEDMAX: _fusedmax_kernel,
    OSCARMAX: _oscarmax_kernel,
    SQ_PNORM_MAX: _sq_pnorm_max_kernel,
    ENTMAX15: _entmax15_kernel,
}
BACKWARD = {
    SPARSEMAX: _sparsemax_backward_kernel,
    FUSEDMAX: _grouped_backward_kernel,
    OSCARMAX: _grouped_backward_kernel,
    SQ_PNORM_MAX: _sq_pnorm_max_backward_kernel,
    ENTMAX15: _entmax15_backward_kernel,
}


def forward_scratch(kind, d):
    """The scratch arrays of one row of a forward kernel, as (dtype, shape) pairs, in
    the kernel's argument order (see the thread functions for their rows)."""
    if kind == SPARSEMAX:
        return [(torch.float64, (3, d))]
    if kind == FUSEDMAX:
        knots = (torch.float64, (3, 2 * d + 2))
        return [(torch.float64, (9, d)), knots, (torch.int64, (d,)), (torch.int32, (d,))]
    if kind == OSCARMAX:
        return [(torch.float64, (7, d)), (torch.int64, (4, d)), (torch.int32, (4, 256))]
    return [(torch.float64, (2, d))]  # sq-pnorm-max, 1.5-entmax


def backward_scratch(kind, d):
    """The scratch arrays of one row of a backward kernel (see ``forward_scratch``)."""
    return [(torch.float64, (2, d))] if kind in STRUCTURED else []


# --------------------------------------------------------------------------- launch


def _load():
    global cuda
    if cuda is None:
        from numba import cuda as module

        cuda = module


def _on_host(function):
    """A copy of the kernel shell ``function`` for the simulator: the same code, but
    the thread function it calls runs as Python, on the numpy arrays that the
    simulator wraps, and what that calls runs compiled for the CPU.

    Running the thin per-thread layer as Python keeps the simulator's compilation to
    the row functions: numba generates machine code for a caller and all its callees
    anew for each type signature of the caller, so a compiled thread function per
    dtype, mask and layout would compile each algorithm many times over. The thread
    functions only pick views and store results (no floating-point arithmetic), so
    Python's rules (numpy's scalar promotion differs from numba's) change no value."""
    from numba.cuda.simulator.cudadrv.devicearray import FakeWithinKernelCUDAArray

    def on_host(python_function):
        def call(*args):
            return python_function(
                *(a._item._ary if isinstance(a, FakeWithinKernelCUDAArray) else a for a in args)
            )

        return call

    namespace = dict(function.__globals__)
    for name in function.__code__.co_names:
        if isinstance(namespace.get(name), numba.core.registry.CPUDispatcher):
            namespace[name] = on_host(namespace[name].py_func)
    return types.FunctionType(function.__code__, namespace, function.__name__)


_compiled = {}  # (shell, simulated) -> kernel


def _kernel(function, simulated):
    key = (function, simulated)
    if key not in _compiled:
        _load()
        if simulated:
            from numba.cuda import simulator

            _compiled[key] = simulator.jit(_on_host(function))
        else:
            # Compiled on first launch for each argument type signature, and cached on
            # disk like the CPU kernels.
            _compiled[key] = cuda.jit(function, cache=True)
    return _compiled[key]


def _simulator_array(value):
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    return FakeCUDAArray(value.numpy()) if isinstance(value, torch.Tensor) else value


def _device_array(value):
    # sync=False: the kernel runs on torch's current stream, after the work that
    # wrote these tensors, so nothing has to wait.
    return cuda.as_cuda_array(value, sync=False) if isinstance(value, torch.Tensor) else value


_streams = {}  # (device index, stream handle) -> numba stream


def _torch_stream(device):
    handle = torch.cuda.current_stream(device).cuda_stream
    key = (device.index, handle)
    if key not in _streams:
        _streams[key] = cuda.external_stream(handle)
    return _streams[key]


def _launch(function, rows, device, args):
    """Launch ``function``'s kernel with one thread per row: compiled on a CUDA
    ``device``, in the simulator on the CPU."""
    threads = min(_THREADS, rows)  # a few rows (a decoder step) need only one block
    blocks = (rows + threads - 1) // threads
    if device.type != "cuda":
        _kernel(function, simulated=True)[blocks, threads](*map(_simulator_array, args))
        return
    kernel = _kernel(function, simulated=False)
    with torch.cuda.device(device):  # numba launches in the current device's context
        kernel[blocks, threads, _torch_stream(device)](*map(_device_array, args))


def _scratch(spec, rows, device):
    """The scratch arrays of ``spec`` for ``rows`` threads, indexed (..., rows): on a
    CUDA device with the row index innermost in memory (coalesced); in the simulator
    with it outermost, so that each thread's scratch rows are contiguous, as in the
    CPU kernels, whose compiled row functions the simulator then reuses."""
    if device.type == "cuda":
        return [torch.empty((*shape, rows), dtype=dtype, device=device) for dtype, shape in spec]
    return [torch.empty((rows, *shape), dtype=dtype).movedim(0, -1) for dtype, shape in spec]


def launch_forward(kind, x, mask, out, aux, inv_gamma, param):
    """Run the forward kernel of ``kind`` with the contract of the CPU kernels.

    Parameters
    ----------
    kind : int
        ``regattn._cpu.SPARSEMAX`` ... ``ENTMAX15``.
    x : torch.Tensor
        (rows, d) float32 or float64 scores, any strides.
    mask : torch.Tensor or None
        (rows, d) bool, True where a position takes part, any strides (zero for a
        broadcast mask).
    out : torch.Tensor
        (rows, d) output of x's dtype, written.
    aux : torch.Tensor
        int32, (rows, d) for the structured maps (group ids), else (rows, 1) (row
        flags), written.
    inv_gamma, param : float
        1 / gamma and the map's parameter (lam or p; ignored by the others).

    Notes
    -----
    On a CUDA device the compiled kernel runs on torch's current stream; on the CPU
    (tests) the same kernel runs in numba's simulator.
    """
    rows, d = x.shape
    if rows == 0:
        return
    if d == 0:  # nothing to launch: an empty row is a row with no valid position
        if kind not in STRUCTURED:
            aux[...] = NO_GRAD
        return
    scratch = _scratch(forward_scratch(kind, d), rows, x.device)
    _launch(FORWARD[kind], rows, x.device, (x, mask, out, aux, inv_gamma, param, *scratch))


def launch_backward(kind, y, aux, g, grad, inv_gamma, param):
    """Run the backward kernel of ``kind``: ``grad`` = the vector-Jacobian product of
    the forward output with ``g``, all (rows, d) tensors (``y``: the forward output
    for the threshold maps, any (rows, d) tensor for the structured maps, which use
    only their group ids in ``aux``). See ``launch_forward``."""
    rows, d = g.shape
    if rows == 0 or d == 0:
        return
    scratch = _scratch(backward_scratch(kind, d), rows, g.device)
    _launch(BACKWARD[kind], rows, g.device, (y, aux, g, grad, inv_gamma, param, *scratch))


# ---------------------------------------------------------------------- torch-facing


def _rows(tensor, dim, layout):
    """``tensor`` as (rows, d) with ``dim`` last, as ``functional._input_rows`` makes
    them: a view when the dims of size > 1 are all on one side of ``dim``."""
    outer, d, inner = layout
    if inner == 1:
        return tensor.reshape(outer, d)
    if outer == 1:
        return tensor.reshape(d, inner).T
    return tensor.movedim(dim, -1).reshape(outer * inner, d)


def _output_rows(shape, dim, layout, dtype, device):
    """A new tensor and its (rows, d) view for a kernel to write, as
    ``functional._output_rows`` makes them (``functional._finished`` completes it)."""
    outer, d, inner = layout
    if inner == 1 or outer == 1:
        tensor = torch.empty(shape, dtype=dtype, device=device)
        return tensor, _rows(tensor, dim, layout)
    tensor = torch.empty((*shape[:dim], *shape[dim + 1 :], d), dtype=dtype, device=device)
    return tensor, tensor.reshape(outer * inner, d)


def kernel_forward(scores, dim, mask, kind, gamma, param, keep_y):
    """``functional.kernel_forward`` on the device: the output tensor, the saved y
    (a (rows, d) tensor when ``keep_y`` for the threshold maps, else None) and the
    kernel's aux (an int32 tensor), all on the scores' device."""
    layout = F._layout(scores.shape, dim)
    dtype = F._compute_dtype(scores.dtype)
    x = _rows(scores.detach().to(dtype), dim, layout)
    valid = None if mask is None else _rows(mask, dim, layout)
    out, out_rows = _output_rows(scores.shape, dim, layout, dtype, scores.device)
    structured = kind in STRUCTURED
    aux = torch.empty(
        (x.shape[0], x.shape[1] if structured else 1), dtype=torch.int32, device=scores.device
    )
    launch_forward(kind, x, valid, out_rows, aux, 1.0 / gamma, param)
    result = F._finished(out, scores, dim, layout)
    saved_y = None
    if keep_y and not structured:
        # y must not see in-place changes to the returned tensor: a copy, unless the
        # result is already one (a moved dim or a half type).
        shared = result.untyped_storage().data_ptr() == out.untyped_storage().data_ptr()
        saved_y = out_rows.clone() if shared else out_rows
    return result, saved_y, aux


def kernel_backward(saved_y, aux, grad_output, dim, kind, gamma, param):
    """``functional.kernel_backward`` on the device, for the state of ``kernel_forward``."""
    layout = F._layout(grad_output.shape, dim)
    dtype = F._compute_dtype(grad_output.dtype)
    g = _rows(grad_output.detach().to(dtype), dim, layout)
    y = g if kind in STRUCTURED else saved_y  # the structured maps use its shape only
    grad, grad_rows = _output_rows(grad_output.shape, dim, layout, dtype, grad_output.device)
    launch_backward(kind, y, aux, g, grad_rows, 1.0 / gamma, param)
    return F._finished(grad, grad_output, dim, layout)


# ------------------------------------------------------------ routing and fallback

_failure = None  # why the kernels cannot run in this process, after the first failure

_NAMES = {
    SPARSEMAX: "sparsemax",
    FUSEDMAX: "fusedmax",
    OSCARMAX: "oscarmax",
    SQ_PNORM_MAX: "sq_pnorm_max",
    ENTMAX15: "entmax15",
}


def _fail(kind, direction, error):
    """Turn the kernels off for this process, with one warning."""
    global _failure
    _failure = f"{type(error).__name__}: {error}"
    warnings.warn(
        f"regattn: the CUDA kernels cannot run ({_NAMES[kind]} {direction}: {_failure}); "
        "CUDA tensors are computed by the CPU kernels from now on (a copy to the host "
        "and back). The CUDA kernels need numba's CUDA target with NVVM: pip install "
        "'regattn[cuda]'.",
        RuntimeWarning,
        stacklevel=2,
    )


def try_forward(scores, dim, mask, kind, gamma, param, keep_y):
    """``kernel_forward``, or None when the kernels cannot run (the first failure
    warns once, and the caller computes on the CPU)."""
    if _failure is not None:
        return None
    try:
        return kernel_forward(scores, dim, mask, kind, gamma, param, keep_y)
    except torch.OutOfMemoryError:
        raise  # the device is full, as it would be for any other operation
    except Exception as error:  # no CUDA target, no NVVM, a compilation or launch error
        _fail(kind, "forward", error)
        return None


def try_backward(saved_y, aux, grad_output, dim, kind, gamma, param):
    """``kernel_backward`` when the forward ran on the device and the kernels can run,
    else None (see ``try_forward``)."""
    if _failure is not None or not isinstance(aux, torch.Tensor):
        return None  # the forward ran on the CPU: its state is on the host
    try:
        return kernel_backward(saved_y, aux, grad_output, dim, kind, gamma, param)
    except torch.OutOfMemoryError:
        raise
    except Exception as error:
        _fail(kind, "backward", error)
        return None


def host_state(saved_y, aux):
    """The forward's saved state as the CPU backward takes it (numpy arrays)."""
    if isinstance(aux, torch.Tensor):
        aux = aux.cpu().numpy()
    if isinstance(saved_y, torch.Tensor):
        saved_y = saved_y.cpu().numpy()
    return saved_y, aux
