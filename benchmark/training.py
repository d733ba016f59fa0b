"""The training and inference loops every torch segmenter shares.

On CUDA, when the training set fits the device (at most `RESIDENT_FRACTION` of the free
memory ``torch.cuda.mem_get_info`` reports, so activations keep the rest), it is moved
there once (no per-step host→device copies); steps run under bf16/fp16 autocast, and the
host only synchronises at epoch ends. A set that does not fit (BraTS at 240², for
instance) is streamed: a background thread gathers each batch from the given arrays
(memory-mapped or not) into pinned host buffers and copies it to the device on a side
stream, `PREFETCH` batches ahead of the step that uses it, so the GPU does not wait for
the disk or the copy. A thread suffices: the gather is numpy fancy indexing and the copy a
CUDA call, both of which release the GIL. On the CPU the loop runs in float32 and reads
each batch from the given arrays, so a memory-mapped training set is never copied whole.
Whichever path runs, the batches and their order are the same for a given seed
(``residency`` forces one, e.g. to compare them).

Both devices train in channels-last layout by default: it is faster for these 2-D conv nets
on GPUs and on CPUs (on the 2-core CPU, one thread, 64², the harness's loop ran 1.07× the
plain contiguous loop, ``benchmarks/test_cpu_training.py``). Layout changes how float sums are ordered, so a
channels-last and a contiguous run of the same seed differ in the last bits and, after
hundreds of steps, by training noise; each is bit-identical across runs at a fixed thread
count.

``compile=True`` trains through ``torch.compile``. Its compiled code is kept by torch for
the rest of the process (a second cell with the same architecture and batch shape reuses
it) and on disk under the poisonbench cache (``torchinductor/``), so a sweep pays the
compile once and later runs pay seconds.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterator, Literal

import numpy as np
import torch
from torch import nn

from .cache import cache_root
from .plugins import RunContext

__all__ = [
    "TrainingHistory", "fit_binary_segmentation", "predict_binary_segmentation", "autocast_dtype", "compiled",
    "RESIDENT_FRACTION", "PREFETCH", "Residency", "training_set_bytes", "fits_on_device",
]

#: torch's variable that places the compiled-kernel cache on disk
INDUCTOR_CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
#: Largest share of the GPU's free memory the training set may take to be kept on the
#: device whole; the rest is left to the network's weights, optimiser state and activations.
RESIDENT_FRACTION = 0.5
#: Batches the streamed path prepares ahead of the step that uses them.
PREFETCH = 3

Residency = Literal["auto", "resident", "streamed"]


@dataclass
class TrainingHistory:
    """Mean training loss per epoch."""

    losses: list[float] = field(default_factory=list)


def autocast_dtype(device: str) -> torch.dtype | None:
    """bf16 where the GPU supports it, fp16 on older GPUs, None (float32) on the CPU."""
    if device != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def training_set_bytes(images: np.ndarray, masks: np.ndarray) -> int:
    """Device bytes of a training set held whole: float32 images, uint8 masks and their float32 copy."""
    n = len(images)
    return n * (int(np.prod(images.shape[1:])) * 4 + int(np.prod(masks.shape[1:])) * 5)


def fits_on_device(images: np.ndarray, masks: np.ndarray, free_bytes: int) -> bool:
    """Whether the training set takes at most `RESIDENT_FRACTION` of ``free_bytes`` of device memory."""
    return training_set_bytes(images, masks) <= RESIDENT_FRACTION * free_bytes


def fit_binary_segmentation(
    net: nn.Module,
    images: np.ndarray,
    masks: np.ndarray,
    context: RunContext,
    epochs: int,
    batch_size: int,
    lr: float,
    loss_fn: nn.Module | None = None,
    flip_augment: bool = True,
    description: str = "epochs",
    on_epoch_end: Callable[[int, nn.Module], None] | None = None,
    steps_per_epoch: int | None = None,
    channels_last: bool = True,
    compile: bool = False,
    residency: Residency = "auto",
) -> TrainingHistory:
    """Train ``net`` (one output channel, logits) on binary masks with Adam.

    Args:
        net: maps ``[B, C, H, W]`` to logits ``[B, 1, H, W]``.
        images: float32 ``[N, C, H, W]``.
        masks: uint8 ``[N, H, W]``.
        context: device, seed and progress of the cell.
        epochs: number of epochs.
        batch_size: slices per step.
        lr: Adam learning rate.
        loss_fn: defaults to MONAI's ``DiceCELoss(sigmoid=True)``.
        flip_augment: random left-right flips per batch. Defaults to True.
        description: progress label.
        on_epoch_end: called with (epoch, net) after each epoch.
        steps_per_epoch: optimisation steps per epoch, drawn from successive shuffles of
            the data; None (the default) makes an epoch one pass over the data. A fixed
            count gives every cell the same training budget, whatever the training set's
            size, so removing or adding cases changes the data a model sees, not how long
            it trains.
        channels_last: train in channels-last layout (the faster one for 2-D convs on both
            devices). Defaults to True.
        compile: train through ``torch.compile`` (`compiled`). Defaults to False.
        residency: where batches come from. ``auto`` (the default): on CUDA the set is
            held on the device when `fits_on_device` (free memory from
            ``torch.cuda.mem_get_info``) and streamed otherwise; on the CPU each batch is
            read from the arrays. ``resident`` holds the set on the device (a tensor on
            the CPU), ``streamed`` streams it through the prefetching thread (pinned
            buffers on CUDA). All three give the same batches in the same order.

    Returns:
        the per-epoch mean losses.
    """
    from monai.losses import DiceCELoss

    device = torch.device(context.device)
    cuda = device.type == "cuda"
    amp = autocast_dtype(context.device)
    if cuda:
        torch.backends.cudnn.benchmark = not context.deterministic
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(device, memory_format=memory_format)
    forward = compiled(net) if compile else net
    loss_fn = loss_fn or DiceCELoss(sigmoid=True)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    scaler = torch.amp.GradScaler("cuda", enabled=cuda and amp == torch.float16)

    if residency not in ("auto", "resident", "streamed"):
        raise ValueError(f"fit_binary_segmentation: residency must be auto, resident or streamed; got {residency!r}")
    if residency == "auto" and cuda:
        residency = "resident" if fits_on_device(images, masks, torch.cuda.mem_get_info(device)[0]) else "streamed"
    stream = _BatchStream(images, masks, device, memory_format, batch_size) if residency == "streamed" else None
    if residency == "resident":
        # one copy of the (possibly memory-mapped, read-only) arrays into host memory, pinned on CUDA
        x_all = torch.empty(images.shape, dtype=torch.float32, pin_memory=cuda)
        x_all.numpy()[...] = images
        x_all = x_all.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        # masks travel as uint8 (4x fewer bytes) and become float on the device
        y_all = torch.empty(masks.shape, dtype=torch.uint8, pin_memory=cuda)
        y_all.numpy()[...] = masks
        y_all = y_all.to(device, non_blocking=True).unsqueeze(1).float()
        batch = lambda index: (x_all[index], y_all[index])  # noqa: E731 - device-resident gather
    else:
        # the CPU reads each batch from the arrays as given (possibly memory-mapped), so a
        # data set larger than RAM is never copied whole
        def batch(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            rows = index.numpy()
            x = torch.from_numpy(np.ascontiguousarray(images[rows], dtype=np.float32)).contiguous(memory_format=memory_format)
            y = torch.from_numpy(np.ascontiguousarray(masks[rows], dtype=np.float32)).unsqueeze(1)
            return x, y

    generator = torch.Generator(device=device).manual_seed(context.seed)
    n = len(images)
    if n == 0:
        raise ValueError("fit_binary_segmentation: the training set is empty")
    slices_per_epoch = n if steps_per_epoch is None else steps_per_epoch * batch_size
    history = TrainingHistory()
    net.train()
    for epoch in context.track(range(epochs), description, total=epochs):
        order, flips = _epoch_schedule(n, slices_per_epoch, flip_augment, generator, device)
        epoch_loss = torch.zeros((), device=device)
        steps = 0
        if stream is not None:
            batches = stream.epoch(order.cpu().numpy())  # one host sync per epoch, as the loss below
        else:
            batches = (batch(order[start : start + batch_size]) for start in range(0, slices_per_epoch, batch_size))
        with contextlib.closing(batches):  # a failing step stops the prefetch thread at once
            for (x, y), start in zip(batches, range(0, slices_per_epoch, batch_size)):
                if flips is not None:
                    flip = flips[start : start + batch_size].view(-1, 1, 1, 1)
                    x = torch.where(flip, x.flip(-1), x)
                    y = torch.where(flip, y.flip(-1), y)
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    loss = loss_fn(forward(x), y)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                epoch_loss += loss.detach().float()
                steps += 1
        history.losses.append(float(epoch_loss) / max(steps, 1))  # one sync per epoch
        if on_epoch_end is not None:
            on_epoch_end(epoch, net)
    return history


class _BatchStream:
    """Batches of host arrays delivered to the device by a background thread, `PREFETCH` ahead.

    The thread gathers each batch's rows (``np.take`` on the arrays as given, memory-mapped
    or not) into one of a ring of host buffers, pinned on CUDA, and there copies it to the
    device on a side stream and waits for the copy, so the buffer can be refilled and the
    step that takes the batch need not wait. Images arrive in ``memory_format``, masks as
    float ``[B, 1, H, W]``: what the resident path gathers.
    """

    def __init__(
        self, images: np.ndarray, masks: np.ndarray, device: torch.device, memory_format: torch.memory_format,
        batch_size: int, prefetch: int = PREFETCH,
    ):
        self.images, self.masks, self.device, self.memory_format = images, masks, device, memory_format
        self.batch_size, self.prefetch = batch_size, prefetch
        self.cuda = device.type == "cuda"
        self.copy_stream = torch.cuda.Stream(device) if self.cuda else None
        # a buffer is in use by the step (CPU: the batch is a view of it), waiting in the
        # queue (``prefetch``) or being filled: ``prefetch + 2`` are never reused too early
        self.buffers = [
            (
                torch.empty((batch_size, *images.shape[1:]), dtype=torch.float32, pin_memory=self.cuda),
                torch.empty((batch_size, *masks.shape[1:]), dtype=torch.uint8, pin_memory=self.cuda),
            )
            for _ in range(prefetch + 2)
        ]

    def epoch(self, order: np.ndarray) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches ``order[0:B]``, ``order[B:2B]``, ... as device tensors ``([B, C, H, W], [B, 1, H, W])``."""
        ready: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        worker = threading.Thread(target=self._produce, args=(order, ready, stop), name="batch-prefetch", daemon=True)
        worker.start()
        try:
            for _ in range(0, len(order), self.batch_size):
                item = ready.get()
                if isinstance(item, BaseException):
                    raise item
                if self.cuda:  # allocated on the copy stream, used on this one
                    for tensor in item:
                        tensor.record_stream(torch.cuda.current_stream(self.device))
                yield item
        finally:
            stop.set()
            while worker.is_alive():  # unblock a producer waiting on a full queue
                try:
                    ready.get_nowait()
                except queue.Empty:
                    pass
                worker.join(timeout=0.05)

    def _produce(self, order: np.ndarray, ready: queue.Queue, stop: threading.Event) -> None:
        try:
            for k, start in enumerate(range(0, len(order), self.batch_size)):
                rows = order[start : start + self.batch_size]
                host_x, host_y = (buffer[: len(rows)] for buffer in self.buffers[k % len(self.buffers)])
                _gather(self.images, rows, host_x.numpy())
                _gather(self.masks, rows, host_y.numpy())
                if self.cuda:
                    with torch.cuda.stream(self.copy_stream):
                        x = host_x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
                        y = host_y.to(self.device, non_blocking=True).unsqueeze(1).float()
                    self.copy_stream.synchronize()  # the host buffer is free again, the batch is on the device
                else:
                    x = host_x.contiguous(memory_format=self.memory_format)
                    y = host_y.unsqueeze(1).float()
                while not stop.is_set():
                    try:
                        ready.put((x, y), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as exc:  # handed to the training loop, which raises it
            ready.put(exc)


def _gather(source: np.ndarray, rows: np.ndarray, out: np.ndarray) -> None:
    """``out[:] = source[rows]`` without an intermediate copy where the dtypes agree."""
    if source.dtype == out.dtype:
        np.take(source, rows, axis=0, out=out)
    else:
        out[...] = source[rows]


def compiled(net: nn.Module) -> nn.Module:
    """``torch.compile(net)`` with its kernels cached on disk beside the other artifacts.

    The cache goes under the poisonbench cache unless the user pointed
    ``TORCHINDUCTOR_CACHE_DIR`` elsewhere than torch's default (torch writes its default into
    the variable when it first looks, so an unset and a defaulted variable are the same here).
    """
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    if os.environ.get(INDUCTOR_CACHE_ENV) in (None, os.path.abspath(default_cache_dir())):
        os.environ[INDUCTOR_CACHE_ENV] = str(cache_root() / "torchinductor")
    return torch.compile(net)


def _epoch_schedule(
    n: int, slices: int, flip_augment: bool, generator: torch.Generator, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Slice order and per-position flip flags for one epoch of ``slices`` draws.

    Successive passes each shuffle all ``n`` slices, so every slice is seen equally often
    to within one; one pass draws exactly what a plain shuffled epoch draws.
    """
    orders, flips = [], []
    for _ in range(-(-slices // n)):
        order = torch.randperm(n, generator=generator, device=device)
        orders.append(order)
        if flip_augment:
            flips.append((torch.rand(n, generator=generator, device=device) < 0.5)[order])
    order = torch.cat(orders)[:slices]
    return order, (torch.cat(flips)[:slices] if flip_augment else None)


@torch.no_grad()
def predict_binary_segmentation(net: nn.Module, images: np.ndarray, context: RunContext, batch_size: int = 32) -> np.ndarray:
    """Threshold ``sigmoid(net(images))`` at 0.5.

    Args:
        net: maps ``[B, C, H, W]`` to logits ``[B, 1, H, W]``.
        images: float32 ``[N, C, H, W]``.

    Returns:
        uint8 masks ``[N, H, W]``.
    """
    device = torch.device(context.device)
    amp = autocast_dtype(context.device)
    net = net.to(device).eval()
    out = np.empty((len(images), *images.shape[2:]), dtype=np.uint8)
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size], dtype=np.float32)).to(device)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = net(x)
        out[start : start + batch_size] = (logits[:, 0] > 0).to("cpu", torch.uint8).numpy()
    return out
