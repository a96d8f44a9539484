"""InsGen's contrastive heads: MoCo-style instance discrimination on D's features (docs/insgen.md §2).

A :class:`ContrastiveHead` has a query MLP (C₄ → C₄ → ReLU → 128), a momentum MLP of the same
shape (a copy at init, then θ_k ← m·θ_k + (1 − m)·θ_q at **every** forward, m = 0.999) and a
queue of K unit keys [128, K] with a ring-buffer pointer. Its loss is the InfoNCE cross-entropy
with the positive at index 0:

    logits = [q·k⁺, q·queue] / τ,  τ = 0.2,  loss = CE(logits, 0)   (InsGen Eq. 2 / MoCo)

q and k are L2-normalised. Keys entering the queue are gathered from every process first
(torch.distributed ``all_gather``; nothing to do in one process), so every rank holds the same
queue. If more keys arrive than the queue holds, the queue becomes the first K of them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from torch_utils import distributed, persistence

KEY_DIM = 128


def gather_keys(keys: torch.Tensor) -> torch.Tensor:
    """All processes' keys concatenated in rank order (this process's keys alone without a group)."""
    return distributed.all_gather_cat(keys, what="InsGen's contrastive keys")


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """CE([q·k, q·queue] / τ, label 0), mean over the batch; q, k [N, 128] unit, queue [128, K]."""
    positive = (q * k).sum(1, keepdim=True)
    negative = q @ queue
    logits = torch.cat([positive, negative], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def _mlp(inplanes: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inplanes, inplanes), nn.ReLU(), nn.Linear(inplanes, KEY_DIM))


@persistence.persistent_class
class ContrastiveHead(nn.Module):
    """One InsGen head (``DHead`` for reals, ``GHead`` for fakes); module docstring.

    Args:
        inplanes: D's feature channels at 4×4 (read from the D configuration).
        queue_size: K.
        temperature: τ (0.2).
        momentum: m of the momentum MLP (0.999).
    """

    def __init__(self, inplanes: int, queue_size: int, temperature: float = 0.2, momentum: float = 0.999) -> None:
        super().__init__()
        if queue_size < 1 or inplanes < 1 or not 0 <= momentum < 1 or temperature <= 0:
            raise ValueError('ContrastiveHead: need inplanes >= 1, queue_size >= 1, 0 <= momentum < 1, temperature > 0')
        self.inplanes, self.queue_size = int(inplanes), int(queue_size)
        self.temperature, self.momentum = float(temperature), float(momentum)
        self.mlp = _mlp(inplanes)
        self.momentum_mlp = _mlp(inplanes)
        self.momentum_mlp.load_state_dict(self.mlp.state_dict())
        self.momentum_mlp.requires_grad_(False)
        self.register_buffer('queue', F.normalize(torch.randn(KEY_DIM, queue_size), dim=0))
        self.register_buffer('queue_ptr', torch.zeros(1, dtype=torch.long))

    def requires_grad_(self, requires_grad: bool = True) -> 'ContrastiveHead':
        """The query MLP follows ``requires_grad``; the momentum MLP never trains."""
        self.mlp.requires_grad_(requires_grad)
        self.momentum_mlp.requires_grad_(False)
        return self

    @torch.no_grad()
    def momentum_update(self) -> None:
        """θ_k ← m·θ_k + (1 − m)·θ_q."""
        for k, q in zip(self.momentum_mlp.parameters(), self.mlp.parameters()):
            k.copy_(k * self.momentum + q.detach() * (1 - self.momentum))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Ring-buffer write of the gathered keys [N, 128] at the pointer; N > K keeps the first K."""
        keys = gather_keys(keys).T.to(self.queue.dtype)
        n, size, ptr = keys.shape[1], self.queue_size, int(self.queue_ptr)
        if n > size:
            self.queue.copy_(keys[:, :size])  # the pointer stays (the reference's rule)
        elif ptr + n > size:
            first = size - ptr
            self.queue[:, ptr:] = keys[:, :first]
            self.queue[:, :n - first] = keys[:, first:]
            self.queue_ptr[0] = n - first
        else:
            self.queue[:, ptr:ptr + n] = keys
            self.queue_ptr[0] = ptr + n  # may equal K: the next write then starts at 0 (the reference's value)

    def query(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(_pooled(features)), dim=1)

    @torch.no_grad()
    def key(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.momentum_mlp(_pooled(features)), dim=1)

    def forward(self, query_features: torch.Tensor, key_features: torch.Tensor, loss_only: bool = False,
                enqueue_query: bool = False) -> torch.Tensor:
        """InfoNCE of queries against (their keys, the queue) after a momentum update.

        Enqueues the keys (real instances), or — ``enqueue_query`` — the momentum MLP of the
        *query* features (fake instances, as the reference), or nothing (``loss_only``: G's term).
        """
        q = self.query(query_features)
        self.momentum_update()
        k = self.key(key_features)
        loss = info_nce(q, k, self.queue.clone(), self.temperature)
        if not loss_only:
            self.enqueue(self.key(query_features.detach()) if enqueue_query else k)
        return loss


def _pooled(features: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] → [N, C] by the spatial mean (float32); [N, C] as it is."""
    features = features.to(torch.float32)
    return features.mean(dim=(2, 3)) if features.ndim > 2 else features
