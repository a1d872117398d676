"""Several processes, one result: the helpers that keep ranks identical (torchrun, any backend).

Every rank holds the same model and method state. Each takes its slice of the global batch;
features are gathered with gradients so the contrastive loss is the global-batch loss; gradients
are averaged (in buckets, over the tensors any rank has a gradient for); per-class sums are
all-reduced before any momentum update. Ranks agree (`every_rank`) before any path that skips a
collective. With one process every helper is the identity, so single-process code pays nothing.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_environment(device_type: str) -> bool:
    """Join the process group that torchrun describes in the environment; False when run alone."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_distributed():
        return is_distributed()
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


def _pad_rows(tensor: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Pad to the largest row count over ranks (collectives need equal shapes); returns every rank's count."""
    counts = [torch.zeros(1, dtype=torch.long, device=tensor.device) for _ in range(world_size())]
    dist.all_gather(counts, torch.tensor([tensor.shape[0]], device=tensor.device))
    counts = [int(c) for c in counts]
    largest = max(counts)
    if tensor.shape[0] < largest:
        tensor = torch.cat([tensor, tensor.new_zeros((largest - tensor.shape[0], *tensor.shape[1:]))])
    return tensor.contiguous(), counts


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's rows in rank order; gradients flow back to each rank's own rows.

    Ranks may hold different numbers of rows (a skipped unreadable image, a filtered batch).
    """
    if not is_distributed():
        return tensor
    from torch.distributed.nn.functional import all_gather

    padded, counts = _pad_rows(tensor)
    return torch.cat([part[:n] for part, n in zip(all_gather(padded), counts)], dim=0)


@torch.no_grad()
def gather(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's rows in rank order, without gradients (rows per rank may differ)."""
    if not is_distributed():
        return tensor
    padded, counts = _pad_rows(tensor)
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, counts)], dim=0)


@torch.no_grad()
def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


BUCKET_BYTES = 25 * 2**20  # DistributedDataParallel's default bucket size


@torch.no_grad()
def average_gradients(parameters: list[torch.nn.Parameter], bucket_bytes: int = BUCKET_BYTES) -> None:
    """Mean of the gradients over ranks, one all-reduce per bucket of at most `bucket_bytes` (one dtype each).

    Ranks first agree on which tensors have a gradient anywhere: one that has none on this rank but
    has one on another counts as zero here, so every rank reduces the same tensors in the same order
    (a rank that left one out would wait forever, or add up the wrong numbers). Buckets bound the
    extra memory to one bucket, not a second copy of every gradient.
    """
    if not is_distributed() or not parameters:
        return
    anywhere = torch.tensor([p.grad is not None for p in parameters], dtype=torch.uint8, device=parameters[0].device)
    dist.all_reduce(anywhere, op=dist.ReduceOp.MAX)
    grads = []
    for p, used in zip(parameters, anywhere.tolist()):
        if used and p.grad is None:
            p.grad = torch.zeros_like(p)
        if used:
            grads.append(p.grad)
    scale = 1.0 / world_size()
    for bucket in _buckets(grads, bucket_bytes):
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.mul_(scale)
        for g, part in zip(bucket, flat.split([g.numel() for g in bucket])):
            g.copy_(part.view_as(g))


def _buckets(grads: list[torch.Tensor], bucket_bytes: int) -> list[list[torch.Tensor]]:
    """Consecutive gradients of one dtype, cut where a bucket would pass `bucket_bytes` (a larger tensor alone)."""
    buckets: list[list[torch.Tensor]] = []
    size = 0
    for g in grads:
        nbytes = g.numel() * g.element_size()
        if not buckets or g.dtype != buckets[-1][0].dtype or size + nbytes > bucket_bytes:
            buckets.append([])
            size = 0
        buckets[-1].append(g)
        size += nbytes
    return buckets


def every_rank(flag: bool) -> bool:
    """True when `flag` holds on every rank: how ranks agree to take the same path around collectives."""
    if not is_distributed():
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    votes = torch.tensor([int(flag)], device=device)
    dist.all_reduce(votes, op=dist.ReduceOp.MIN)
    return bool(votes.item())


def union(indices: set[int], device: torch.device) -> set[int]:
    """Every rank's indices together (such as the images each found unreadable in its slices)."""
    if not is_distributed():
        return indices
    return set(gather(torch.tensor(sorted(indices), dtype=torch.long, device=device)).tolist())


def local_world_size() -> int:
    """Processes on this machine (torchrun's LOCAL_WORLD_SIZE; 1 when run alone)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def workers_per_process(workers: int) -> int:
    """--workers is per machine: each of its processes loads with its share (at least one when any are asked)."""
    return workers if workers == 0 else max(1, workers // local_world_size())


def barrier() -> None:
    if is_distributed():
        dist.barrier()
