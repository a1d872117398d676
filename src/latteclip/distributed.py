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


def leave(wait_for_others: bool) -> None:
    """Leave the process group this process joined, every group of it included.

    Exiting with live groups lets the backend's threads be torn down while a peer still talks to them (gloo: "terminate
    called without an active exception"); after a finished run every rank first waits at a barrier, so none leaves
    while another still needs it.
    """
    if wait_for_others:
        dist.barrier()
    dist.destroy_process_group()


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


class GradientSync:
    """The mean of the gradients over ranks, all-reduced in buckets as the backward pass finishes them (DDP's way).

    Each bucket is one flat buffer whose slices are the gradients themselves (`.grad` views, as DDP's
    `gradient_as_bucket_view`): no second copy of the gradients. A hook per tensor counts it in when its gradient
    is complete; buckets are all-reduced asynchronously in a fixed order, on a process group of their own, so the
    collectives that the backward pass itself runs (the gathered features' backward) never pair with them. After
    `backward`, `finish` starts the buckets still waiting (a tensor this rank did not use holds zeros), waits for
    all, and drops the gradients no rank produced (as one process would have none). Overlap is used only when the
    ranks agree, before the backward pass, that their graphs reach the same tensors; otherwise every bucket starts
    after it. With one process it does nothing.
    """

    def __init__(self, parameters: list[torch.nn.Parameter], bucket_bytes: int = BUCKET_BYTES, overlap: bool = True):
        self.parameters = parameters
        self.may_overlap = overlap  # False: every bucket after the backward pass (benchmarks/grad_sync.py compares)
        self.active = is_distributed() and bool(parameters)
        self.armed = False  # between start and finish: a backward pass elsewhere (none today) is not counted
        if not self.active:
            return
        self.buckets = _buckets(list(reversed(range(len(parameters)))), parameters, bucket_bytes)  # backward order
        self.bucket_of = {i: b for b, bucket in enumerate(self.buckets) for i in bucket}
        self.buffers = [
            torch.zeros(
                sum(parameters[i].numel() for i in bucket),
                dtype=parameters[bucket[0]].dtype,
                device=parameters[bucket[0]].device,
            )
            for bucket in self.buckets
        ]
        self.group = dist.new_group(backend=dist.get_backend())  # every rank, its own channel
        self.overlap = False
        for i, p in enumerate(parameters):
            p.register_post_accumulate_grad_hook(lambda _, i=i: self._counted_in(i))

    def start(self, loss: torch.Tensor) -> None:
        """Before `backward(loss)`: gradients as views of the zeroed buckets, and whether to overlap this step."""
        if not self.active:
            return
        for bucket, buffer in zip(self.buckets, self.buffers):
            buffer.zero_()
            for i, part in zip(bucket, buffer.split([self.parameters[i].numel() for i in bucket])):
                self.parameters[i].grad = part.view_as(self.parameters[i])
        self.pending = [len(bucket) for bucket in self.buckets]
        self.used = [False] * len(self.parameters)
        self.next_bucket, self.works, self.armed = 0, [], True
        reached = reachable(loss, self.parameters)
        votes = torch.tensor([reached, [not r for r in reached]], dtype=torch.uint8, device=self.buffers[0].device)
        dist.all_reduce(votes, op=dist.ReduceOp.MIN)  # a tensor every rank reaches, and one no rank does
        self.overlap = self.may_overlap and bool((votes[0] | votes[1]).all())

    def _counted_in(self, index: int) -> None:
        if not self.armed or self.used[index]:
            return
        self.used[index] = True
        self.pending[self.bucket_of[index]] -= 1
        while self.overlap and self.next_bucket < len(self.buckets) and self.pending[self.next_bucket] == 0:
            self._launch()

    def _launch(self) -> None:
        buffer = self.buffers[self.next_bucket]
        self.works.append(dist.all_reduce(buffer, op=dist.ReduceOp.SUM, group=self.group, async_op=True))
        self.next_bucket += 1

    @torch.no_grad()
    def finish(self) -> None:
        """After `backward`: every bucket reduced and averaged; tensors no rank gave a gradient keep none."""
        if not self.armed:
            return
        self.armed = False
        while self.next_bucket < len(self.buckets):
            self._launch()
        for work in self.works:
            work.wait()
        for buffer in self.buffers:
            buffer.mul_(1.0 / world_size())
        used = torch.tensor(self.used, dtype=torch.uint8, device=self.buffers[0].device)
        dist.all_reduce(used, op=dist.ReduceOp.MAX)
        for p, anywhere in zip(self.parameters, used.tolist()):
            if not anywhere:
                p.grad = None


def reachable(loss: torch.Tensor, parameters: list[torch.nn.Parameter]) -> list[bool]:
    """Which of `parameters` the backward pass from `loss` reaches (its AccumulateGrad nodes): DDP's unused search."""
    wanted = {id(p): i for i, p in enumerate(parameters)}
    found = [False] * len(parameters)
    seen, stack = set(), [loss.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if variable is not None and id(variable) in wanted:
            found[wanted[id(variable)]] = True
        stack.extend(next_node for next_node, _ in node.next_functions)
    return found


def _buckets(order: list[int], parameters: list[torch.nn.Parameter], bucket_bytes: int) -> list[list[int]]:
    """Consecutive tensors (indices, in `order`) of one dtype and device, cut where a bucket would pass the size."""
    buckets: list[list[int]] = []
    size = 0
    for i in order:
        p, first = parameters[i], parameters[buckets[-1][0]] if buckets else None
        nbytes = p.numel() * p.element_size()
        if first is None or (p.dtype, p.device) != (first.dtype, first.device) or size + nbytes > bucket_bytes:
            buckets.append([])
            size = 0
        buckets[-1].append(i)
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
