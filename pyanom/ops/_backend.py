"""The one pattern every op follows: backend choice, the torch.library op, and the kernel launch.

Each op has one stem (coreset, knn, attention, channel_attention, concentrated) naming
csrc/<stem>.h, csrc/cpu/<stem>.cpp, csrc/cuda/<stem>.cu, pyanom/ops/<stem>.py and
tests/ops/test_<stem>.py. Its public function checks the arguments once and calls
torch.ops.pyanom.<stem>, whose last argument is the backend. define() gives that op the torch
twin from pyanom.ops.reference as its default kernel (any device, and installations without
the compiled module), and registers a native kernel for the "cpu" and "cuda" dispatch keys
where the compiled module has _C.<stem>_cpu / _C.<stem>_cuda. launch() calls those, by the
argument names csrc/<stem>.h declares (checked against _C.kernel_args at every call).
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from typing import Callable

import torch

from pyanom._build import native_module

BACKENDS = ("auto", "native", "torch")
# The CUDA kernels compile but have not yet been run on a GPU: until they pass the ops suite
# there, "auto" keeps CUDA tensors on the torch path (explicit "native" still reaches them).
AUTO_NATIVE_DEVICES = ("cpu",)
# The dtypes the kernels take, and the names they take them by.
DTYPE_NAMES = {torch.float32: "float32", torch.float64: "float64"}


def native_available(device: torch.device) -> bool:
    """True when the compiled module has kernels for this device and can use it."""
    c = native_module()
    if c is None:
        return False
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        return bool(c.build_info()["cuda"]) and c.cuda_device_count() > 0
    return False


def resolve(backend: str, device: torch.device, op: str) -> str:
    """Return "native" or "torch" for `op` on `device`; the one check of the backend argument.

    "auto" means native when built for the device (and trusted there, AUTO_NATIVE_DEVICES), torch
    otherwise; the environment variable PYANOM_BACKEND (native|torch) overrides "auto" but never
    an explicit choice.
    """
    if backend == "auto":
        env = os.environ.get("PYANOM_BACKEND", "").strip().lower()
        if env in ("native", "torch"):
            backend = env
        elif env not in ("", "auto"):
            raise ValueError(f"PYANOM_BACKEND must be auto, native or torch, got {env!r}")
        else:
            auto_ok = device.type in AUTO_NATIVE_DEVICES
            return "native" if auto_ok and native_available(device) else "torch"
    elif backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "native" and not native_available(device):
        from pyanom._build import build_info

        info = build_info()
        why = info.get("native_error") or f"this build has backends {info['backends_compiled']}"
        raise RuntimeError(f"{op}: no native kernel for device {device} ({why})")
    return backend


def for_grad(backend: str, op: str, **tensors: torch.Tensor) -> str:
    """The backend for an op whose native kernels have no backward pass: when an input needs a
    gradient, "auto" becomes "torch" (the twin's gradient) and "native" raises."""
    needing = [name for name, t in tensors.items() if t.requires_grad]
    if not (needing and torch.is_grad_enabled()):
        return backend
    if backend == "native":
        raise ValueError(f"{op}: backend='native' has no backward pass, but {needing[0]} requires "
                         "grad; use backend='auto' or 'torch', or torch.no_grad()")
    return "torch" if backend == "auto" else backend


def twin_vjp(twin: Callable, args: tuple, grad_output: torch.Tensor,
             needs_input_grad: tuple) -> list:
    """The twin's vector-Jacobian product at args (recomputed under autograd): the backward of
    an op's torch path. None for arguments that need no gradient."""
    wanted = [i for i, a in enumerate(args) if needs_input_grad[i] and isinstance(a, torch.Tensor)]
    with torch.enable_grad():
        leaves = [a.detach().requires_grad_() if i in wanted else a for i, a in enumerate(args)]
        out = twin(*leaves)
        grads = torch.autograd.grad(out, [leaves[i] for i in wanted], grad_output)
    result = [None] * len(args)
    for i, g in zip(wanted, grads):
        result[i] = g
    return result


def dtype_name(x: torch.Tensor) -> str:
    return DTYPE_NAMES[x.dtype]


def _current(device: torch.device):
    """The context in which a kernel sizes its grid for `device` and launches on its stream."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _bound(name: str, args: dict, tail: tuple[str, ...]):
    """_C.<name> after checking that `args` then `tail` are its arguments, by name and in order,
    as csrc/<stem>.h declares them (_C.kernel_args): a build older or newer than the Python code
    fails here, naming the difference, instead of reading one argument as another."""
    c = native_module()
    declared = c.kernel_args.get(name, ("no such kernel",))
    passed = (*args, *tail)
    if declared != passed:
        raise RuntimeError(f"pyanom.ops passes _C.{name} ({', '.join(passed)}) but the compiled "
                           f"module declares ({', '.join(declared)}): rebuild pyanom "
                           "(pip install -e .) or correct the call")
    return getattr(c, name)


def workspace(kernel: str, like: torch.Tensor, **sizes) -> torch.Tensor:
    """The uint8 scratch _C.<kernel>_workspace_bytes_<device>(**sizes, dtype) asks for, on like's
    device (allocated by torch's caching allocator: kernels allocate nothing)."""
    size = _bound(f"{kernel}_workspace_bytes_{like.device.type}", sizes, ("dtype",))
    if like.device.type == "cpu":
        _follow_torch_threads()
    with _current(like.device):
        nbytes = size(*sizes.values(), dtype_name(like))
    return torch.empty(nbytes, dtype=torch.uint8, device=like.device)


def launch(kernel: str, like: torch.Tensor, **args) -> None:
    """_C.<kernel>_cpu(**args, dtype) or _C.<kernel>_cuda(**args, dtype, stream), with like's
    dtype, on the current stream of like's device (so CUDA graphs and side streams work)."""
    device = like.device
    with _current(device):
        if device.type == "cuda":
            fn = _bound(f"{kernel}_cuda", args, ("dtype", "stream"))
            fn(*args.values(), dtype_name(like), torch.cuda.current_stream(device).cuda_stream)
        else:
            _follow_torch_threads()
            _bound(f"{kernel}_cpu", args, ("dtype",))(*args.values(), dtype_name(like))


_THREADS = threading.local()  # the count last given to the kernels' OpenMP runtime, per thread


def _follow_torch_threads() -> None:
    """The CPU kernels use torch's intra-op thread count (torch.set_num_threads), on this thread."""
    threads = torch.get_num_threads()
    if getattr(_THREADS, "count", None) != threads:
        native_module().set_num_threads(threads)
        _THREADS.count = threads


@dataclass
class Op:
    """One op: its public name (for messages), its torch twin and its native launcher, both
    taking the op's arguments without the backend. Looked up at each call, so tests can spy."""

    stem: str
    name: str
    twin: Callable | None
    native: Callable


OPS: dict[str, Op] = {}
_LIBRARY = torch.library.Library("pyanom", "DEF")


def _twin_backward(twin: Callable):
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*(a for a in inputs if isinstance(a, torch.Tensor)))
        ctx.inputs = [None if isinstance(a, torch.Tensor) else a for a in inputs]

    def backward(ctx, grad):
        tensors = iter(ctx.saved_tensors)
        args = [next(tensors) if a is None else a for a in ctx.inputs][:-1]  # without the backend
        return (*twin_vjp(twin, tuple(args), grad, ctx.needs_input_grad), None)

    return backward, setup_context


def device_of(args) -> torch.device:
    return next(a.device for a in args if isinstance(a, torch.Tensor))


def define(stem: str, name: str, schema: str, *, twin: Callable | None, native: Callable,
           fake: Callable, backward: Callable | None = None, setup_context: Callable | None = None,
           twin_gradient: Callable | None = None):
    """Register torch.ops.pyanom.<stem> with `schema` (the backend last) and return it.

    Its default kernel, for every device, is the twin (and the error for backend="native" where
    no native kernel exists). Where the compiled module has _C.<stem>_<device>, that device's
    dispatch key gets a kernel that runs `native` unless the backend resolves to torch.
    twin=None makes a native-only op (a native backward pass: its forward picked the backend).
    Gradients: `backward` and `setup_context` as torch.library takes them, or, for ops whose
    native kernels have none (see for_grad), `twin_gradient`: the differentiable definition
    whose vector-Jacobian product is the op's backward.
    """
    if twin_gradient is not None:
        backward, setup_context = _twin_backward(twin_gradient)
    op = OPS[stem] = Op(stem, name, twin, native)

    def twin_kernel(*args):
        *args, backend = args
        device = device_of(args)
        if op.twin is None or resolve(backend, device, name) == "native":
            raise RuntimeError(f"{name}: no native kernel for device {device} in this build")
        return op.twin(*args)

    def native_kernel(*args):
        *args, backend = args
        if resolve(backend, device_of(args), name) == "native":
            return op.native(*args)
        return op.twin(*args)

    # The dispatcher's own registration (not torch.library.custom_op, whose kernels import
    # torch._dynamo, seconds, at an op's first call): the twin is the default kernel of every
    # device, a native kernel the kernel of its device's key.
    _LIBRARY.define(f"{stem}{schema}")
    _LIBRARY.impl(stem, twin_kernel, "CompositeExplicitAutograd")
    c = native_module()
    for device in ("cpu", "cuda"):
        if c is not None and hasattr(c, f"{stem}_{device}"):
            _LIBRARY.impl(stem, native_kernel, device.upper())
    torch.library.register_fake(f"pyanom::{stem}", fake, lib=_LIBRARY)
    if backward is not None:
        torch.library.register_autograd(f"pyanom::{stem}", backward, setup_context=setup_context, lib=_LIBRARY)
    return getattr(torch.ops.pyanom, stem)
