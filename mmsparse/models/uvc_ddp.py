"""Multi-process UVC stage 1: the model wrapper and the task-gradient averaging it relies on.

MMEngine's ``MMDistributedDataParallel.train_step`` runs its own single-optimizer step and would
bypass :meth:`UVCClassifier.train_step`, whose primal-dual step needs five optimizers and the
gradients of the block gates. So stage 1 runs under :class:`UVCDistributedDataParallel`, which
calls the model's own step, and that step averages the task gradients itself with
:func:`average_gradients` (one all-reduce per step), right after the task backward. Every
process then holds the same weights, gate gradients and scores, and takes the same weight,
gate, architecture and dual steps (the latter are deterministic functions of those).
"""
from typing import Dict, Sequence

import torch
from torch import Tensor, nn

from mmsparse.registry import MODEL_WRAPPERS

__all__ = ['UVCDistributedDataParallel', 'average_gradients']


def _world_size() -> int:
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size()


def average_gradients(params: Sequence[nn.Parameter]) -> None:
    """Average the gradients of ``params`` over the processes (what DDP would do).

    A parameter without a gradient counts as a zero gradient (and gets one). One flat
    all-reduce; no-op in a single process.
    """
    import torch.distributed as dist
    world = _world_size()
    if world < 2:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


@MODEL_WRAPPERS.register_module()
class UVCDistributedDataParallel(nn.Module):
    """Multi-process wrapper for UVC stage 1 (``model_wrapper_cfg=dict(type=
    'UVCDistributedDataParallel')``; see the module docstring).

    At construction the model's state is broadcast from process 0. Training, validation and
    test steps are the model's.

    Args:
        module: the :class:`~mmsparse.models.UVCClassifier`.
        **kwargs: the usual DDP arguments (``device_ids``, ``broadcast_buffers``,
            ``find_unused_parameters``), accepted and ignored.
    """

    def __init__(self, module: nn.Module, **kwargs) -> None:
        super().__init__()
        self.module = module
        if _world_size() > 1:
            import torch.distributed as dist
            with torch.no_grad():
                for t in module.state_dict().values():
                    if isinstance(t, Tensor):
                        dist.broadcast(t, 0)

    def train_step(self, data, optim_wrapper) -> Dict[str, Tensor]:
        return self.module.train_step(data, optim_wrapper)

    def val_step(self, data) -> list:
        return self.module.val_step(data)

    def test_step(self, data) -> list:
        return self.module.test_step(data)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
