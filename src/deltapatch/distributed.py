"""Training one patch on several processes with torch.distributed (``torchrun ... -m deltapatch
train``): DistributedDataParallel over the patch's parameters only, the backbone never wrapped.

The promise is that N processes train **the same patch as one process** with the same global
batch (to float tolerance), so a user can switch world size, even between a run and its resume.
That fixes three choices:

* Every rank draws the single-process order: the epoch generator (seed, epoch) is the same on
  all ranks, so they agree on each global batch, and augmentation draws are made for the whole
  global batch before each rank keeps its rows. A rank owns the images whose index ≡ rank
  (mod world), the partition ``DistributedSampler(shuffle=False)`` makes, fixed for the whole run,
  so the frozen-feature cache of a rank holds only its shard (built once, 1/N of the work and
  memory). ``DistributedSampler(shuffle=True)`` itself is not used: it re-deals the shards
  every epoch (a per-rank cache could not follow) and its global batches are not the
  single-process ones. The price is that a rank's share of a batch varies around B/N.
* The loss of a rank is its summed loss over the global batch size times N, so DDP's gradient
  average is exactly the global batch's mean gradient, whatever each rank's share.
* The patch's BatchNorms in train mode normalise with the global batch's statistics
  (:class:`GlobalBatchNorm`, put in each norm's place for the run: two autograd all-reduces
  on a group of their own), as one process would; torch's ``SyncBatchNorm`` refuses CPU
  tensors and drops a subclass's blend, and one implementation serves gloo and NCCL.
* A rank that holds none of a global batch's rows runs an empty batch, so every collective of
  the step still happens on every rank.
* On CUDA each rank trains on ``cuda:LOCAL_RANK`` (:func:`local_device`) with NCCL, DDP gets
  ``device_ids`` and every collective's tensor is on the device; on the CPU it is gloo.

Without torchrun's environment (``WORLD_SIZE`` > 1) nothing here is used and training is
unchanged. Rank 0 alone reads and writes the run folder; the other ranks receive its resumed
state by broadcast and write into a private scratch folder that is deleted at exit.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .batches import correct_count, device_of, model_inputs, sum_dtype
from .data.augment import Crops, draw_crops
from .data.sets import ImageSet, TaskData
from .errors import DeltaPatchError

CPU = torch.device("cpu")

ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


@dataclass
class Session:
    """This process's place in a torchrun job."""

    rank: int
    world: int
    local_rank: int
    backend: str
    stats_group: object  # the process group BatchNorm statistics are reduced on

    @property
    def main(self) -> bool:
        return self.rank == 0


def env_world() -> tuple[int, int, int] | None:
    """(rank, world, local rank) from torchrun's environment; None without it or for one
    process (a world of one is the plain, unchanged path)."""
    if "WORLD_SIZE" not in os.environ:
        return None
    try:
        rank, world, local = (int(os.environ.get(k, "0")) for k in ("RANK", "WORLD_SIZE",
                                                                     "LOCAL_RANK"))
    except ValueError:
        raise DeltaPatchError(f"torchrun environment is malformed: "
                              f"{ {k: os.environ.get(k) for k in ENV} }") from None
    return None if world <= 1 else (rank, world, local)


def backend_for(device: torch.device) -> str:
    """NCCL for CUDA tensors, gloo for CPU ones."""
    return "nccl" if device.type == "cuda" else "gloo"


def local_device(device: torch.device) -> torch.device:
    """Under torchrun a CUDA run trains on ``cuda:LOCAL_RANK`` (one GPU per process, as
    torchrun hands them out); anything else is ``device`` unchanged."""
    where = env_world()
    if where is None or device.type != "cuda":
        return device
    count = torch.cuda.device_count()
    if where[2] >= count:
        raise DeltaPatchError(f"torchrun local rank {where[2]} has no GPU: this machine has "
                              f"{count}; start at most {count} processes per node "
                              "(--nproc-per-node)")
    return torch.device("cuda", where[2])


def session(device: torch.device = CPU) -> Session | None:
    """The torchrun session of one training run, or None when not under torchrun (or with one
    process). torch's default process group is started on first use, with the backend of
    ``device`` (where the model is); each call adds a BatchNorm-statistics group of its own, so
    nothing of a run is kept in this module between runs (every rank calls this at the same
    point of a run, as ``new_group`` requires)."""
    where = env_world()
    if where is None:
        return None
    rank, world, local = where
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend_for(device), init_method="env://", rank=rank,
                                world_size=world)
        atexit.register(_close)
    backend = dist.get_backend()
    return Session(rank, world, local, backend, dist.new_group(backend=backend))


def _close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def is_main() -> bool:
    """Whether this process prints and writes results: rank 0, or any non-torchrun process."""
    where = env_world()
    return where is None or where[0] == 0


def private_out(out: Path) -> Path:
    """``out`` on rank 0; elsewhere a scratch folder deleted at exit, so that only rank 0
    writes (and locks) the real task folder."""
    if is_main():
        return out
    scratch = Path(tempfile.mkdtemp(prefix=f"deltapatch-rank{env_world()[0]}-"))
    atexit.register(shutil.rmtree, scratch, True)
    return scratch / out.name


# ---------------------------------------------------------------- BatchNorm on the global batch
class GlobalBatchNorm(nn.Module):
    """Takes the place of one BatchNorm of the trained module while a torchrun run trains it:
    in train mode it normalises with the statistics of the rows of all ranks together (mean,
    then the centred second moment: two passes, as accurate as one process's); in eval mode it
    is the norm itself.

    It holds the norm's own parameters and buffers (the same tensors, under the same names), so
    DDP, the optimizer and the checkpoint's state dict see exactly what they would see without
    it. A norm with a ``blend(h, normed)`` (:class:`~deltapatch.baseinit.GatedBatchNorm`) gets
    the global ``normed`` to blend. torch's ``SyncBatchNorm`` does not fit: it refuses CPU
    tensors (gloo runs, CI) and would drop a subclass's blend; this one module serves gloo and
    NCCL alike."""

    def __init__(self, norm: _BatchNorm, group) -> None:
        super().__init__()
        self.__dict__["norm"] = norm  # not a child: its tensors are registered here by name
        for name, p in norm.named_parameters(recurse=False):
            self.register_parameter(name, p)
        for name, b in norm.named_buffers(recurse=False):
            self.register_buffer(name, b)
        self.group = group
        self.train(norm.training)

    def forward(self, x: Tensor) -> Tensor:
        norm = self.norm
        if not self.training:
            return norm.train(False)(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = x.new_full((1,), x.numel() // x.shape[1])  # a rank may hold no rows: 0
        total = _SumAll.apply(torch.cat([x.sum(dims), count]), self.group)
        n = total[-1].detach()
        mean = total[:-1] / n
        centred = x - mean.view(shape)
        var = _SumAll.apply((centred * centred).sum(dims), self.group) / n
        if norm.track_running_stats and norm.running_mean is not None:
            _update_running(norm, mean.detach(), var.detach(), n)
        out = centred * torch.rsqrt(var + norm.eps).view(shape)
        if norm.affine:
            out = out * norm.weight.view(shape) + norm.bias.view(shape)
        blend = getattr(norm, "blend", None)
        return out if blend is None else blend(x, out)


@torch.no_grad()
def _update_running(norm: _BatchNorm, mean: Tensor, var: Tensor, n: Tensor) -> None:
    """As ``F.batch_norm`` does: momentum (or a cumulative average), unbiased variance. The
    count stays on the device (no host sync); its ratio is taken in float64 and rounded once,
    as a Python float's would be."""
    norm.num_batches_tracked.add_(1)
    m = 1.0 / float(norm.num_batches_tracked) if norm.momentum is None else norm.momentum
    n = n.double()
    unbiased = (n / (n - 1).clamp(min=1.0)).to(var.dtype)
    norm.running_mean.mul_(1 - m).add_(mean, alpha=m)
    norm.running_var.mul_(1 - m).add_(var * unbiased, alpha=m)


class _SumAll(torch.autograd.Function):
    """Sum over ranks; its gradient is the sum over ranks of the incoming gradients (every
    rank's loss depends on every rank's rows through the shared statistics)."""

    @staticmethod
    def forward(ctx, t: Tensor, group) -> Tensor:
        ctx.group = group
        t = t.clone()
        dist.all_reduce(t, group=group)
        return t

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


Swapped = list[tuple[nn.Module, str, nn.Module]]  # (parent, child name, the original norm)


def globalize_norms(owned: nn.Module, group) -> Swapped:
    """Put a :class:`GlobalBatchNorm` in place of each BatchNorm of ``owned``; returns what
    :func:`restore_norms` puts back."""
    swapped = []
    for parent in list(owned.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, _BatchNorm):
                swapped.append((parent, name, child))
                setattr(parent, name, GlobalBatchNorm(child, group))
    return swapped


def restore_norms(swapped: Swapped) -> None:
    for parent, name, norm in swapped:
        norm.train(getattr(parent, name).training)
        setattr(parent, name, norm)


# ---------------------------------------------------------------- the shard of one rank
class _Step(nn.Module):
    """What DDP wraps: the trained module (its parameters are DDP's) and the forward that uses
    it; the backbone is reached through the forward's closure and is never wrapped."""

    def __init__(self, owned: nn.Module, forward: Callable) -> None:
        super().__init__()
        self.owned = owned
        self.fn = forward

    def forward(self, x):
        return self.fn(x)


@dataclass
class Shard:
    """One rank's part of a training run.

    ``local`` says whether the train/val sets handed to :meth:`batches` / :meth:`evaluate` hold
    only this rank's images (rows in index order: global index = row · world + rank; what the
    per-rank feature cache holds) or all of them."""

    session: Session
    n_train: int
    n_val: int
    local: bool = False
    device: torch.device = CPU  # where the trained module is (prepare() reads it)
    _norms: list = field(default_factory=list, repr=False)  # what prepare() swapped

    @property
    def main(self) -> bool:
        return self.session.main

    def _owned(self, n: int) -> Tensor:
        return torch.arange(self.session.rank, n, self.session.world)

    def take(self, data: TaskData) -> TaskData:
        """``data`` with train and val cut to this rank's images (before caching features)."""
        return replace(data, train=data.train.subset(self._owned(len(data.train))),
                       val=data.val.subset(self._owned(len(data.val))))

    def batches(self, train: ImageSet, batch_size: int, g: torch.Generator,
                augment: Callable[[int, int], Crops] | None
                ) -> Iterator[tuple[Tensor, Tensor, int, Crops | None]]:
        """(this rank's rows, their labels, the global batch size, their crops) for each global
        batch of the single-process order; ``augment(n, side)`` (drawing from ``g``) draws for
        the whole global batch, and this rank keeps its rows' draws.

        A rank that holds none of a batch's images (a tail batch smaller than the world, or bad
        luck with a tiny batch) gets an empty batch: it still runs the forward and backward, so
        every collective of the step happens on every rank, and adds nothing to any loss,
        gradient or statistic."""
        rank, world = self.session.rank, self.session.world
        if augment is not None and self.local:
            raise ValueError("augmentation draws for the whole global batch need every "
                             "image; a per-rank feature cache has only this rank's")
        order = torch.randperm(self.n_train, generator=g)
        for start in range(0, self.n_train, batch_size):
            idx = order[start:start + batch_size]
            mine = idx % world == rank
            rows = idx[mine] // world if self.local else idx[mine]
            crops = None if augment is None else augment(len(idx), train.images.shape[2]).rows(mine)
            yield train.images[rows], train.labels[rows], len(idx), crops

    def step(self, step: Callable, preprocess, batch: tuple) -> tuple[Tensor, Tensor, Tensor, int]:
        """Forward one of :meth:`batches`; (loss to backward: this rank's share of the global
        batch's mean loss times world, as DDP averages; its part of the summed loss; correct;
        rows counted), the sums on the device."""

        x, y, n_global, crops = batch
        logits = step(model_inputs(x, preprocess, self.device, crops))
        y = y.to(self.device)
        losses = F.cross_entropy(logits, y, reduction="none")
        loss = losses.sum() * (self.session.world / n_global)
        summed = losses.detach().sum().to(sum_dtype(self.device))
        return loss, summed, (logits.argmax(1) == y).sum(), len(y)

    def wrap(self, owned: nn.Module, forward: Callable) -> Callable:
        """DDP over ``owned``'s trainable parameters (replicas made equal to rank 0's now)."""
        import inspect

        from torch.nn.parallel import DistributedDataParallel as DDP

        # buffers (BatchNorm statistics) are equal on all ranks by construction: no re-sync
        quiet = ("forward_sync_buffers" if "forward_sync_buffers" in
                 inspect.signature(DDP.__init__).parameters else "broadcast_buffers")
        ids = {"device_ids": [self.device]} if self.device.type == "cuda" else {}
        return DDP(_Step(owned, forward), **{quiet: False}, **ids)

    def sum(self, *values: Tensor | float) -> list[float]:
        """Each value summed over ranks, in one all-reduce on the device (float64, exact for
        counts; the one read of the epoch's sums)."""
        t = torch.stack([torch.as_tensor(v, device=self.device).to(torch.float64)
                         for v in values])
        dist.all_reduce(t)
        return t.tolist()

    @torch.inference_mode()
    def evaluate(self, forward: Callable, val: ImageSet, preprocess, batch_size: int) -> float:
        """Top-1 on the whole validation split: each rank scores its images, counts summed."""

        mine = val if self.local else val.subset(self._owned(len(val)))
        right, = self.sum(correct_count(forward, mine, preprocess, batch_size, self.device))
        return right / max(1, self.n_val)

    def broadcast(self, make: Callable[[], object]) -> object:
        """``make()`` run on rank 0, its result (or its DeltaPatchError) given to every rank."""
        box: list[object] = [None]
        if self.main:
            try:
                box[0] = ("ok", make())
            except DeltaPatchError as err:
                box[0] = ("error", str(err))
        dist.broadcast_object_list(box, src=0)
        kind, value = box[0]
        if kind == "error":
            raise DeltaPatchError(value)
        return value

    def seed(self, seed: int) -> None:
        """Per-rank seed of torch's global generator (dropout and the like differ by rank);
        the batch order and augmentation come from the shared epoch generator."""
        torch.manual_seed(seed * 1_000_003 + self.session.rank)

    # the training loop's side (deltapatch.train.Loop); train.Local is the same for one process
    def prepare(self, owned: nn.Module, forward: Callable, seed: int) -> Callable:
        """The step to train with: DDP over ``owned`` on its device, its norms global, this
        rank seeded."""

        self.device = device_of(owned)
        step = self.wrap(owned, forward)
        self._norms = globalize_norms(owned, self.session.stats_group)
        self.seed(seed)
        return step

    def epoch(self, data: TaskData, config, g: torch.Generator) -> Iterator[tuple]:
        return self.batches(data.train, config.batch_size, g, augmenter(config, data.hflip, g))

    def finish(self) -> None:
        restore_norms(self._norms)


def shard_for(data: TaskData, local: bool = False, device: torch.device = CPU) -> Shard | None:
    """The shard of this rank for ``data`` (whole sets), or None when not under torchrun; the
    first call in a process starts torch's process group with ``device``'s backend."""
    s = session(device)
    if s is None:
        return None
    if len(data.train) < s.world:
        raise DeltaPatchError(f"{len(data.train)} training images for {s.world} processes: "
                              "every process needs at least one; use fewer processes")
    return Shard(s, len(data.train), len(data.val), local)


def augmenter(config, hflip: bool, g: torch.Generator) -> Callable[[int, int], Crops] | None:
    """Draws of a global batch of ``n`` images of side ``side`` from ``g`` (None: no
    augmentation)."""
    return (lambda n, side: draw_crops(n, side, g, hflip)) if config.augment else None
