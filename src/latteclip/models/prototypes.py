"""The class prototype bank of LatteCLIP (method.md 1.3): one unit vector per class, kept in fp32."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from latteclip.distributed import all_reduce_sum


def full_precision(tensor: torch.Tensor):
    """Autocast off on the tensor's device: arithmetic that must stay fp32 under bf16/fp16 training."""
    return torch.autocast(tensor.device.type, enabled=False)


class PrototypeBank:
    """Class prototypes p_c, initialised from the class text features z_c.

    `momentum_update` applies step 7: for each class present, the mean t_batch,c of its embeddings,
    then p_c <- normalize((1 - mu) * t_batch,c + mu * p_c). The authors' rule is mu = 0: Eq. (2)'s
    alpha already blends each embedding with p_c, so alpha is the momentum; mu > 0 is the paper's
    literal second momentum. Absent classes keep p_c. The arithmetic is fp32 whatever autocast is on
    (a 1 % step towards the texts is below bf16's resolution for unit vectors). Under torchrun the
    per-class sums and counts are all-reduced first, so every rank applies the same update.
    """

    def __init__(self, init: torch.Tensor):
        self.vectors = init.detach().clone().float()

    @property
    def num_classes(self) -> int:
        return self.vectors.shape[0]

    def class_sums(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sums = torch.zeros_like(self.vectors).index_add_(
            0, labels.to(self.vectors.device), embeddings.detach().float().to(self.vectors.device)
        )
        counts = torch.bincount(labels.to(self.vectors.device), minlength=self.num_classes).float()
        return sums, counts

    def apply_sums(self, sums: torch.Tensor, counts: torch.Tensor, mu: float) -> None:
        present = counts > 0
        means = sums[present] / counts[present].unsqueeze(1)
        self.vectors[present] = F.normalize((1.0 - mu) * means + mu * self.vectors[present], dim=-1)

    @torch.no_grad()
    def momentum_update(self, embeddings: torch.Tensor, labels: torch.Tensor, mu: float) -> None:
        with full_precision(self.vectors):
            sums, counts = self.class_sums(embeddings, labels)
            self.apply_sums(all_reduce_sum(sums), all_reduce_sum(counts), mu)

    def to(self, device) -> PrototypeBank:
        self.vectors = self.vectors.to(device)
        return self

    def state_dict(self) -> dict:
        return {"vectors": self.vectors.detach().cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        self.vectors = state["vectors"].to(self.vectors.device).float()
