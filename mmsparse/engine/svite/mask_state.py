"""The state of a SViTE dynamic-sparse-training run: masks, RNG, update count, history.

One object per run, held by the hook that trains it and read back by whoever needs the masks
later (``--resume``, compaction, compact checkpoints). It is the one place that knows the
checkpoint schema (``checkpoint['svite']``), packs and restores it, fingerprints the masks and
keeps them identical across ranks.

Two kinds, one per hook, the same schema around their masks:

- :class:`UnstructuredMaskState` (:class:`~mmsparse.engine.SparseTrainingHook`): one bool mask
  per masked weight, by parameter name, and the *fired* masks (entries ever active, for the
  exploration ratio); stored bit-packed (:func:`~mmsparse.ops.dst.pack_mask`) with their
  shapes, the per-layer densities and the target density.
- :class:`StructuredMaskState` (:class:`~mmsparse.engine.StructuredSparseTrainingHook`): per
  encoder layer a bool (H,) head mask and a bool (F,) MLP-neuron mask, stored as bool tensors,
  with the heads' channels and the two densities.

Both also store ``kind``, ``version`` (1), the mask generator's state, ``num_updates``,
``history`` (one dict per update) and ``pending`` (an update waiting for an optimizer step).
These are exactly the keys the hooks wrote before this module existed, so their checkpoints
load unchanged.
"""
from typing import ClassVar, Dict, List, Mapping, Optional, Sequence

import torch
from mmengine.dist import all_gather, broadcast, get_world_size
from torch import Tensor

from mmsparse.ops import dst

__all__ = ['CHECKPOINT_KEY', 'MaskState', 'UnstructuredMaskState', 'StructuredMaskState',
           'read_mask_state', 'saved_kind']

CHECKPOINT_KEY = 'svite'
VERSION = 1


class MaskState:
    """What every SViTE run carries from step to step and from checkpoint to resume.

    Attributes:
        generator: the CPU generator of every random mask draw (its state is saved, so a
            resumed run draws what the uninterrupted one would have).
        num_updates: mask updates done.
        history: one record (dict of numbers) per update.
        pending: a due update that found no optimizer step and waits for the next one.
    """

    KIND: ClassVar[str] = ''

    def __init__(self, generator: Optional[torch.Generator] = None) -> None:
        self.generator = generator
        self.num_updates = 0
        self.history: List[dict] = []
        self.pending = False

    # ---- per kind -------------------------------------------------------------------------
    def mask_list(self) -> List[Tensor]:
        """The masks every rank must hold identically, in a fixed order."""
        raise NotImplementedError

    def set_mask_list(self, masks: Sequence[Tensor]) -> None:
        """Replace the masks of :meth:`mask_list` (same order and shapes)."""
        raise NotImplementedError

    def _pack_masks(self) -> dict:
        raise NotImplementedError

    def _unpack_masks(self, state: Mapping) -> None:
        raise NotImplementedError

    # ---- checkpoint -----------------------------------------------------------------------
    def has_masks(self) -> bool:
        """Whether masks were drawn or restored (nothing to save before)."""
        return bool(self.mask_list())

    def pack(self) -> dict:
        """The ``checkpoint['svite']`` entry (CPU tensors, picklable, weights-only loadable)."""
        return dict(kind=self.KIND, version=VERSION, **self._pack_masks(),
                    generator=self.generator.get_state(), num_updates=self.num_updates,
                    history=list(self.history), pending=self.pending)

    @classmethod
    def unpack(cls, state: Mapping) -> 'MaskState':
        """Inverse of :meth:`pack` (masks on CPU)."""
        out = cls()
        out._unpack_masks(state)
        out.generator = torch.Generator()
        out.generator.set_state(state['generator'])
        out.num_updates = int(state['num_updates'])
        out.history = list(state.get('history', []))
        out.pending = bool(state.get('pending', False))
        return out

    # ---- ranks ----------------------------------------------------------------------------
    def fingerprint(self) -> Tensor:
        """float64 (2 * #masks,): per mask, entries kept and the sum of their flat indices."""
        return torch.tensor([v for m in self.mask_list() for v in dst.mask_fingerprint(m)],
                            dtype=torch.float64)

    def broadcast(self, src: int = 0) -> None:
        """Replace every rank's masks by rank ``src``'s: one bit-packed collective."""
        masks = self.mask_list()
        packed = [dst.pack_mask(m) for m in masks]
        flat = torch.cat(packed)
        broadcast(flat, src=src)
        out, start = [], 0
        for m, p in zip(masks, packed):
            out.append(dst.unpack_mask(flat[start:start + p.numel()], m.shape).to(m.device))
            start += p.numel()
        self.set_mask_list(out)

    def ranks_agree(self) -> bool:
        """Whether every rank holds the same masks (all-gathered fingerprints)."""
        gathered = all_gather(self.fingerprint())
        return all(torch.equal(g.cpu(), gathered[0].cpu()) for g in gathered)

    def synchronise(self, sync: str, verify: bool, owner: str, when: str, logger) -> None:
        """Broadcast rank 0's masks (``sync='broadcast'``) and, with ``verify``, check that
        every rank agrees. Nothing happens on one process.

        Args:
            sync: 'broadcast' or 'none'.
            verify: all-gather fingerprints and raise on a mismatch.
            owner: the hook's name, for the messages.
            when: what just changed the masks ('init', 'update 3' ...).
            logger: where the agreement is reported.

        Raises:
            RuntimeError: if the ranks' masks differ.
        """
        world = get_world_size()
        if world == 1:
            return
        if sync == 'broadcast':
            self.broadcast()
        if verify:
            if not self.ranks_agree():
                raise RuntimeError(f'{owner}: the masks differ between ranks after {when} '
                                   f"(sync={sync!r}); use sync='broadcast'")
            logger.info(f'{owner}: masks identical on {world} ranks after {when} '
                        f'(sync={sync})')


class UnstructuredMaskState(MaskState):
    """SViTE's weight masks (see the module docstring).

    Attributes:
        masks: parameter name -> bool mask of the weight's shape, in model order.
        fired: parameter name -> bool mask of the entries ever active.
        densities: parameter name -> target density of the layer.
        density: the overall target density.
    """

    KIND = 'unstructured'

    def __init__(self, generator: Optional[torch.Generator] = None) -> None:
        super().__init__(generator)
        self.masks: Dict[str, Tensor] = {}
        self.fired: Dict[str, Tensor] = {}
        self.densities: Dict[str, float] = {}
        self.density = 0.0

    def mask_list(self) -> List[Tensor]:
        return list(self.masks.values())

    def set_mask_list(self, masks: Sequence[Tensor]) -> None:
        for n, m in zip(list(self.masks), masks):
            self.masks[n] = m
            self.fired[n] = self.fired[n] | m if n in self.fired else m.clone()

    def _pack_masks(self) -> dict:
        return dict(shapes={n: list(m.shape) for n, m in self.masks.items()},
                    masks={n: dst.pack_mask(m) for n, m in self.masks.items()},
                    fired={n: dst.pack_mask(m) for n, m in self.fired.items()},
                    densities=dict(self.densities), density=self.density)

    def _unpack_masks(self, state: Mapping) -> None:
        shapes = {n: tuple(s) for n, s in state['shapes'].items()}
        self.masks = {n: dst.unpack_mask(state['masks'][n], s) for n, s in shapes.items()}
        self.fired = {n: dst.unpack_mask(state['fired'][n], s) for n, s in shapes.items()}
        self.densities = dict(state.get('densities', {}))
        self.density = float(state.get('density', 0.0))

    def stats(self) -> Dict[str, float]:
        """Realised overall density and exploration ratio (fraction ever active)."""
        total = sum(m.numel() for m in self.masks.values())
        kept = sum(int(m.sum()) for m in self.masks.values())
        fired = sum(int(m.sum()) for m in self.fired.values())
        return dict(density=kept / max(total, 1), exploration=fired / max(total, 1))


class StructuredMaskState(MaskState):
    """S²ViTE's head and neuron masks (see the module docstring).

    Attributes:
        head_masks: per encoder layer, bool (H,) active heads.
        neuron_masks: per encoder layer, bool (F,) active MLP neurons.
        head_dims: per encoder layer, channels per head (what compaction needs to cut qkv).
        head_density: fraction of heads kept per layer.
        mlp_density: fraction of neurons kept per layer.
    """

    KIND = 'structured'

    def __init__(self, generator: Optional[torch.Generator] = None) -> None:
        super().__init__(generator)
        self.head_masks: List[Tensor] = []
        self.neuron_masks: List[Tensor] = []
        self.head_dims: List[int] = []
        self.head_density = 0.0
        self.mlp_density = 0.0

    def mask_list(self) -> List[Tensor]:
        return list(self.head_masks) + list(self.neuron_masks)

    def set_mask_list(self, masks: Sequence[Tensor]) -> None:
        n = len(self.head_masks)
        self.head_masks, self.neuron_masks = list(masks[:n]), list(masks[n:])

    def _pack_masks(self) -> dict:
        return dict(head_masks=[m.cpu() for m in self.head_masks],
                    neuron_masks=[m.cpu() for m in self.neuron_masks],
                    head_dims=list(self.head_dims), head_density=self.head_density,
                    mlp_density=self.mlp_density)

    def _unpack_masks(self, state: Mapping) -> None:
        self.head_masks = [m.to(torch.bool).cpu() for m in state['head_masks']]
        self.neuron_masks = [m.to(torch.bool).cpu() for m in state['neuron_masks']]
        self.head_dims = [int(d) for d in state.get('head_dims', [])]
        self.head_density = float(state.get('head_density', 0.0))
        self.mlp_density = float(state.get('mlp_density', 0.0))

    def stats(self) -> Dict[str, float]:
        """Realised fractions of heads and of MLP neurons kept, over all layers."""
        h = sum(int(m.sum()) for m in self.head_masks)
        n = sum(int(m.sum()) for m in self.neuron_masks)
        return dict(head_density=h / max(sum(m.numel() for m in self.head_masks), 1),
                    mlp_density=n / max(sum(m.numel() for m in self.neuron_masks), 1))


_KINDS = {cls.KIND: cls for cls in (UnstructuredMaskState, StructuredMaskState)}


def saved_kind(checkpoint: Mapping) -> Optional[str]:
    """The kind of SViTE masks ``checkpoint`` holds ('unstructured', 'structured', another
    string for an unknown kind), or None if it holds none."""
    state = checkpoint.get(CHECKPOINT_KEY)
    if not isinstance(state, Mapping):
        return None
    return str(state.get('kind'))


def read_mask_state(checkpoint: Mapping) -> Optional[MaskState]:
    """The mask state a SViTE hook saved in ``checkpoint`` (a loaded ``.pth`` dict), or None if
    it holds none (or of a kind this version does not know)."""
    cls = _KINDS.get(saved_kind(checkpoint))
    return None if cls is None else cls.unpack(checkpoint[CHECKPOINT_KEY])
