"""Single process, or DistributedDataParallel when launched by torchrun (one node or several).

`setup(device_arg)` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK), picks the device,
initialises the process group (NCCL on CUDA, gloo on the CPU) and returns a `Dist` record. Without
torchrun it is a plain single process and every collective below is a no-op. A stray or incomplete launcher
environment (WORLD_SIZE without RANK, a WORLD_SIZE that is no number) is one error line, and the wait for
the other processes is bounded (`RENDEZVOUS_TIMEOUT`) and ends at SIGTERM.
"""
from __future__ import annotations

import datetime
import functools
import os
import signal
import threading
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np
import torch
import torch.distributed as dist

from utils.engine import lock
from utils.errors import UserError, out_of_memory, script_name


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def local_world() -> int:
    """The processes of this job on this node (torchrun's LOCAL_WORLD_SIZE; 1 without torchrun): they share its
    CPU cores and its shared memory."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def pick_device(arg: str, local_rank: int = 0, world: int = 1) -> torch.device:
    """The device of `--device arg` for the process of `local_rank` (torchrun's LOCAL_RANK) in a job of `world`
    processes: `cuda` is cuda:LOCAL_RANK; an explicit cuda:N under torchrun would put every process on one GPU."""
    if arg == "auto":
        arg = "cuda" if torch.cuda.is_available() else "cpu"
    if arg.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {arg}: no CUDA device is available (use --device cpu)")
        if arg == "cuda":
            return torch.device("cuda", local_rank)
        if world > 1:
            raise UserError(f"--device {arg} under torchrun ({world} processes): every process would take that one "
                            f"GPU; pass --device cuda (process k takes cuda:LOCAL_RANK) and choose the GPUs with "
                            f"CUDA_VISIBLE_DEVICES")
    try:
        return torch.device(arg)
    except RuntimeError:
        raise UserError(f"--device {arg!r}: expected auto, cpu, cuda or cuda:N") from None


# how long a process waits for the others to join: torchrun starts a job's processes within seconds of each other
RENDEZVOUS_TIMEOUT = datetime.timedelta(minutes=5)


def _launcher() -> tuple:
    """(world, rank, local_rank) from torchrun's variables, checked: without WORLD_SIZE, one process."""
    env = os.environ

    def number(name: str, default: Optional[str] = None) -> int:
        text = env.get(name, default)
        if text is None or not text.strip().isdigit():
            raise UserError(f"{name}={text!r} in the environment is not a whole number >= 0: launch with torchrun, "
                            f"which sets WORLD_SIZE, RANK and LOCAL_RANK, or unset WORLD_SIZE to run one process")
        return int(text)

    world = number("WORLD_SIZE", "1")
    if world <= 1:
        return 1, 0, 0
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in env]
    if missing:
        raise UserError(f"WORLD_SIZE={world} is set in the environment but {', '.join(missing)} not: launch with "
                        f"torchrun (it sets them all), or unset WORLD_SIZE to run one process")
    rank, local_rank = number("RANK"), number("LOCAL_RANK", "0")
    number("MASTER_PORT")
    if rank >= world:
        raise UserError(f"RANK={rank} is not below WORLD_SIZE={world}: launch with torchrun, or unset WORLD_SIZE")
    return world, rank, local_rank


def _join(backend: str) -> None:
    """Initialise the default process group, waiting at most RENDEZVOUS_TIMEOUT for the other processes. The
    wait is in C++, where the SIGTERM handler of `errors.run_main` would not run: the signal's default action
    (the process ends) holds meanwhile; nothing has been written yet."""
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL) if main_thread else None
    try:
        store, rank, world = next(dist.rendezvous("env://", timeout=RENDEZVOUS_TIMEOUT))
        store.set_timeout(RENDEZVOUS_TIMEOUT)  # every process's connection to the group too
        dist.init_process_group(backend, store=dist.PrefixStore("default_pg", store), rank=rank, world_size=world)
    except RuntimeError as e:  # torch's DistStoreError / DistNetworkError: no other process came
        raise UserError(f"the other processes of WORLD_SIZE={os.environ['WORLD_SIZE']} did not join within "
                        f"{RENDEZVOUS_TIMEOUT.total_seconds():.0f} s at {os.environ['MASTER_ADDR']}:"
                        f"{os.environ['MASTER_PORT']} ({str(e).splitlines()[0]}): launch every process (torchrun "
                        f"--nproc_per_node N), or unset WORLD_SIZE to run one process") from None
    finally:
        if main_thread and previous is not None:  # None: a handler not set from Python, SIG_DFL stays
            signal.signal(signal.SIGTERM, previous)
    store.set_timeout(dist.default_pg_timeout)  # later waits on the store: as torch sets them


def setup(device_arg: str) -> Dist:
    """The process's `Dist`. On CUDA the device is also made the current one, in one process too: streams,
    events and new tensors without a device then belong to it, not to cuda:0 (`engine.HostCopy`)."""
    world, rank, local_rank = _launcher()
    device = pick_device(device_arg, local_rank, world)
    if device.type == "cuda":
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: there are {torch.cuda.device_count()} CUDA devices "
                            f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    if world > 1 and not dist.is_initialized():
        _join("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local_rank, device)


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def entry(fn: Callable) -> Callable:
    """Turn `fn(args, d)` into a stage entry point `fn(args)`: the device and process group are set up
    from `args.device` before, and the process group is torn down after, also on an error. A CUDA out-of-memory
    error becomes one line (`errors.out_of_memory`)."""
    @functools.wraps(fn)
    def run(args):
        d = setup(args.device)
        try:
            return fn(args, d)
        except torch.OutOfMemoryError:
            # one line naming the batch, and the state a training run can go on from (rank 0 saved it)
            state = os.path.join(args.savepath, "checkpoint.pth") if "resume" in vars(args) else None
            raise UserError(out_of_memory(script_name(), getattr(args, "batch_size", None),
                                          state if state and os.path.isfile(state) else None)) from None
        finally:
            lock.release_all()
            cleanup()
    return run


def mean(d: Dist, x: torch.Tensor) -> torch.Tensor:
    """The mean of `x` over the processes (`x` itself without torchrun)."""
    if not d.enabled:
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x / d.world


def all_true(d: Dist, flag: torch.Tensor) -> bool:
    """Whether the boolean scalar `flag` (on the device) is true on every rank; every rank must call it at the same
    point, and all then decide alike (a rank that stopped alone would leave the others waiting in a collective)."""
    if not d.enabled:
        return bool(flag)
    x = flag.to(torch.int32)  # a MIN of integers: what gloo and NCCL both reduce
    dist.all_reduce(x, op=dist.ReduceOp.MIN)
    return bool(x)


def gather_objects(d: Dist, obj: object) -> list:
    """Every rank's `obj`, in rank order, on every rank (a one-item list without torchrun)."""
    if not d.enabled:
        return [obj]
    out = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(d: Dist, obj: object) -> object:
    """Rank 0's `obj` (picklable) on every rank; the other ranks' `obj` is ignored (`obj` itself without torchrun).
    Every rank waits here until rank 0 arrives."""
    if not d.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)  # NCCL: through the current device, which `setup` set
    return box[0]


def shard(n: int, d: Dist) -> list:
    """Indices 0..n-1 of this rank for inference: every index on exactly one rank, no padding."""
    return list(range(d.rank, n, d.world))


class EpochBatchSampler(torch.utils.data.Sampler):
    """Training batches of one rank: a seeded permutation per epoch, padded to a multiple of the
    world size like DistributedSampler, cut into batches of (epoch, index) keys (the epoch reaches
    persistent workers this way); `start_batch` skips the batches a resumed run already trained on.
    A final batch of one image is dropped (BatchNorm cannot train on it).

    Its cost does not grow with the list per step: the permutation is drawn once per pass (an array),
    each batch's keys are made as the batch is asked for, and `len` is arithmetic.
    """

    def __init__(self, n: int, batch_size: int, d: Dist, seed: int = 0, shuffle: bool = True):
        if n == 0:
            raise UserError("the training list is empty")
        self.n, self.batch_size, self.d, self.seed, self.shuffle = n, batch_size, d, seed, shuffle
        self.epoch, self.start_batch = 0, 0
        self.per_rank = -(-n // d.world)
        batches = -(-self.per_rank // batch_size)
        last = self.per_rank - (batches - 1) * batch_size
        self.batches = batches - 1 if batches > 1 and last == 1 else batches

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def order(self) -> np.ndarray:
        """This rank's indices of the epoch, in training order (padded by wrapping around)."""
        order = (np.random.default_rng([self.seed, self.epoch]).permutation(self.n) if self.shuffle
                 else np.arange(self.n))
        return np.resize(order, self.per_rank * self.d.world)[self.d.rank::self.d.world]

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[list]:
        mine, epoch, size = self.order(), self.epoch, self.batch_size
        for b in range(self.start_batch, self.batches):
            yield [(epoch, i) for i in mine[b * size:(b + 1) * size].tolist()]


# ------------------------------------------------------------------------- whole-batch BatchNorm
def sync_batchnorm(model: torch.nn.Module, d: Dist) -> torch.nn.Module:
    """BatchNorm over the global batch (every process's rows), in place: torch's SyncBatchNorm on CUDA,
    `GlobalBatchNorm2d` below elsewhere (torch's has no CPU kernels). Parameters and buffers are the
    same objects, so an optimiser built before and the state-dict keys stay valid."""
    if d.device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if isinstance(child, torch.nn.BatchNorm2d) and not isinstance(child, GlobalBatchNorm2d):
            new = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats)
            new.weight, new.bias = child.weight, child.bias
            new.running_mean, new.running_var = child.running_mean, child.running_var
            new.num_batches_tracked = child.num_batches_tracked
            new.train(child.training)
            setattr(model, name, new)
        else:
            sync_batchnorm(child, d)
    return model


class GlobalBatchNorm2d(torch.nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are reduced over all processes (gloo or NCCL); in eval
    mode, or without a process group, it is BatchNorm2d."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        momentum = self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if momentum is None:  # cumulative moving average, as BatchNorm2d
                momentum = 1.0 / float(self.num_batches_tracked)
        return _GlobalBatchNorm.apply(x, self.weight, self.bias, self.running_mean, self.running_var,
                                      self.eps, momentum)


class _GlobalBatchNorm(torch.autograd.Function):
    """y = (x - mean) / sqrt(var + eps) * weight + bias with mean/var over every process's batch.
    Backward returns this process's share of the parameter gradients (DDP averages them) and the
    input gradient of the summed loss of all processes, as torch's SyncBatchNorm does."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, momentum):
        dims, shape = [0] + list(range(2, x.dim())), (1, -1) + (1,) * (x.dim() - 2)
        xf = x.double() if x.dtype == torch.float64 else x.float()  # half precision: in float32
        c = xf.shape[1]
        stats = torch.cat([xf.sum(dims), xf.new_tensor([xf.numel() // c])])
        dist.all_reduce(stats)
        count = stats[c]
        mean = stats[:c] / count
        centred = xf - mean.view(shape)
        var = (centred * centred).sum(dims)  # two passes: no cancellation in E[x^2] - E[x]^2
        dist.all_reduce(var)
        var /= count
        invstd = torch.rsqrt(var + eps)
        xhat = centred * invstd.view(shape)
        y = xhat if weight is None else xhat * weight.to(xf.dtype).view(shape) + bias.to(xf.dtype).view(shape)
        if running_mean is not None:
            with torch.no_grad():
                running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
                unbiased = var * count / (count - 1).clamp(min=1)
                running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
        ctx.save_for_backward(xhat, invstd, weight, count)
        ctx.dims, ctx.shape, ctx.dtype = dims, shape, x.dtype
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        xhat, invstd, weight, count = ctx.saved_tensors
        dims, shape = ctx.dims, ctx.shape
        g = grad.to(xhat.dtype)
        sum_g, sum_g_xhat = g.sum(dims), (g * xhat).sum(dims)
        grad_weight = sum_g_xhat.to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None
        grad_bias = sum_g.to(weight.dtype) if weight is not None and ctx.needs_input_grad[2] else None
        grad_x = None
        if ctx.needs_input_grad[0]:  # the same on every process: the collective below matches up
            both = torch.cat([sum_g, sum_g_xhat])
            dist.all_reduce(both)
            c = sum_g.numel()
            scale = invstd if weight is None else invstd * weight.to(invstd.dtype)
            grad_x = ((g - (both[:c] / count).view(shape) - xhat * (both[c:] / count).view(shape))
                      * scale.view(shape)).to(ctx.dtype)
        return grad_x, grad_weight, grad_bias, None, None, None, None

