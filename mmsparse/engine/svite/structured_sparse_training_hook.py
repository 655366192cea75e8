"""S²ViTE's structured dynamic sparse training: :class:`StructuredSparseTrainingHook`.

Attention heads (qkv rows) and MLP neurons (fc1 rows, fc2 columns) of every encoder layer of a
:class:`~mmsparse.models.SViTEVisionTransformer`: heads pruned by the first-order Taylor
scores its attention records and regrown by gradient L1; neurons pruned by weight L1 and
regrown by gradient L1 (or at random); the schedule, gradient capture, checkpoint and rank sync
of :mod:`.dst_hook`; the update rule :func:`~mmsparse.ops.dst.structured_prune_regrow`.
"""
from typing import Dict, List, Optional, Tuple

import torch
from mmengine.dist import all_reduce
from torch import Tensor, nn

from mmsparse.errors import ConfigError
from mmsparse.models.utils import unwrap_model
from mmsparse.ops import dst
from mmsparse.registry import HOOKS
from .dst_hook import DSTHook
from .mask_state import StructuredMaskState

__all__ = ['StructuredSparseTrainingHook']


@HOOKS.register_module()
class StructuredSparseTrainingHook(DSTHook):
    """Structured dynamic sparse training (S²ViTE): attention heads and MLP neurons.

    Needs a backbone whose attention layers record head scores,
    :class:`~mmsparse.models.SViTEVisionTransformer` (``model.backbone.type=
    'mmsparse.SViTEVisionTransformer'``).

    Masks per layer: ``int(H * head_density)`` heads (rows of Q, K and V in ``qkv.weight``) and
    ``int(F * mlp_density)`` MLP neurons (``fc1`` rows and ``fc2`` columns), drawn at random.
    Biases, ``proj``, the patch embedding and the head stay dense, as in the original: a removed
    head therefore still adds the constant ``proj(attention @ b_v) = W_proj[:, h] b_v``, which
    compaction folds into ``proj.bias`` (exact, see :mod:`mmsparse.compaction.svite`).

    Update (every ``update_interval`` iterations, same trigger and death-rate schedule as
    :class:`~mmsparse.engine.SparseTrainingHook`), per layer, with ``n = ceil(rate * active)``:
    heads: drop the n active heads of smallest Taylor score ``mean_b |sum dL/dO * O|``, enable
    the n inactive heads of largest gradient L1 ``mean_b sum |dL/dO|`` (scores averaged over the
    last ``score_iters`` iterations and over ranks); neurons: drop the n active neurons of
    smallest ``|fc1 row|_1 + |fc2 col|_1``, enable the n inactive ones of largest gradient L1.

    Args:
        head_density: fraction of heads kept per layer, in (0, 1] (``--atten_density``).
        mlp_density: fraction of MLP neurons kept per layer, in (0, 1] (``--other_density``).
        score_iters: iterations whose head scores are averaged for an update (original: 1), in
            [1, update_interval].
        neuron_growth: 'gradient' (the original: gradient L1 of the fc1 row + fc2 column) or
            'random'. With 'gradient' a neuron that has been inactive for a while has a zero
            gradient (its fc1 row and fc2 column are both zero), so the neurons just pruned,
            whose gradients are not zero, are the ones regrown and the MLP masks barely move;
            'random' regrows uniformly among the inactive neurons (exploration).
        others: as :class:`~mmsparse.engine.SparseTrainingHook`.
    """
    STATE = StructuredMaskState
    NEURON_GROWTHS = ('gradient', 'random')

    def __init__(self, head_density: float = 0.7, mlp_density: float = 0.6,
                 update_interval: int = 15000, stop_ratio: float = 0.8, death_rate: float = 0.5,
                 death_rate_min: float = 0.005, death_rate_decay: str = 'cosine',
                 score_iters: int = 1, neuron_growth: str = 'gradient',
                 seed: Optional[int] = None, sync: str = 'broadcast',
                 verify_sync: bool = True, log_layers: bool = True,
                 schedule_iters: Optional[int] = None) -> None:
        super().__init__(update_interval, stop_ratio, death_rate, death_rate_min,
                         death_rate_decay, seed, sync, verify_sync, schedule_iters)
        keys = self.keys
        self.head_density = float(keys.number('head_density', head_density, 0.0, 1.0,
                                              low_open=True))
        self.mlp_density = float(keys.number('mlp_density', mlp_density, 0.0, 1.0,
                                             low_open=True))
        self.score_iters = keys.number('score_iters', score_iters, 1, update_interval,
                                       integer=True)
        self.neuron_growth = keys.choice('neuron_growth', neuron_growth, self.NEURON_GROWTHS)
        self.log_layers = keys.boolean('log_layers', log_layers)
        self.blocks: List[nn.Module] = []
        self._factors: List[Tuple[Tensor, Tensor, Tensor]] = []

    # ---- the run's masks, as attributes ---------------------------------------------------
    @property
    def head_masks(self) -> List[Tensor]:
        """Per layer, bool (H,) active heads."""
        return self.state.head_masks

    @property
    def neuron_masks(self) -> List[Tensor]:
        """Per layer, bool (F,) active MLP neurons."""
        return self.state.neuron_masks

    # ---- model parts ----------------------------------------------------------------------
    def resolve_blocks(self, model: nn.Module) -> List[nn.Module]:
        """The encoder layers whose heads and neurons are masked (their ``attn`` records head
        scores, their ``fc1`` / ``fc2`` are the MLP).

        Raises:
            ConfigError: if the backbone's attention does not record head scores, or a
                density keeps no head / neuron.
        """
        from mmsparse.models.layers import Attention
        backbone = getattr(model, 'backbone', None)
        attention_layers = getattr(backbone, 'attention_layers', None)
        blocks = [] if attention_layers is None else [
            layer for layer, attn in zip(backbone.layers, attention_layers())
            if isinstance(attn, Attention)]
        if not blocks:
            raise ConfigError(f"{self.keys.prefix} needs model.backbone.type="
                              f"'mmsparse.SViTEVisionTransformer' (its attention records the "
                              f"head scores), got {type(backbone).__name__}")
        for b in blocks:
            h, f = b.attn.num_heads, b.fc1.out_features
            if not b.attn.uniform:  # a head's qkv rows are found by head_dims alone
                raise ConfigError(f'{self.keys.prefix} needs heads of equal value dims, got '
                                  f'v_dims={b.attn.v_dims}')
            if int(h * self.head_density) < 1:
                raise ConfigError(f'{self.keys.key("head_density")}={self.head_density} keeps '
                                  f'int({h} * {self.head_density}) = 0 of {h} heads; use '
                                  f'>= {1 / h:.3g}')
            if int(f * self.mlp_density) < 1:
                raise ConfigError(f'{self.keys.key("mlp_density")}={self.mlp_density} keeps '
                                  f'no MLP neuron of {f}')
        return blocks

    def _grad_params(self) -> Dict[str, nn.Parameter]:
        out = {}
        for i, b in enumerate(self.blocks):
            out[f'{i}.fc1'], out[f'{i}.fc2'] = b.fc1.weight, b.fc2.weight
        return out

    def _refresh_factors(self) -> None:
        """Per block, 0/1 factors of the weights' dtype: qkv rows (3C', 1), fc1 rows (F, 1),
        fc2 columns (1, F)."""
        self._factors = []
        for b, hm, nm in zip(self.blocks, self.head_masks, self.neuron_masks):
            dt = b.attn.qkv.weight.dtype
            rows = dst.head_rows_mask(hm, b.attn.head_dims).to(dt).unsqueeze(1)
            self._factors.append((rows, nm.to(dt).unsqueeze(1), nm.to(dt).unsqueeze(0)))

    # ---- hook points ----------------------------------------------------------------------
    def before_run(self, runner) -> None:
        self.blocks = self.resolve_blocks(unwrap_model(runner.model))

    def before_train(self, runner) -> None:
        self.blocks = self.resolve_blocks(unwrap_model(runner.model))
        restored = self._start_state(runner)
        state = self.state
        state.head_dims = [b.attn.head_dims for b in self.blocks]
        state.head_density, state.mlp_density = self.head_density, self.mlp_density
        if restored is not None:
            self._adopt_restored()
            what = f'resume (update {self.num_updates})'
        else:
            for b in self.blocks:
                dev = b.attn.qkv.weight.device
                state.head_masks.append(dst.init_structured_mask(
                    b.attn.num_heads, self.head_density, self.generator).to(dev))
                state.neuron_masks.append(dst.init_structured_mask(
                    b.fc1.out_features, self.mlp_density, self.generator).to(dev))
            what = 'init'
        self._synchronise(runner, what)
        self.apply_masks()
        self._register_capture(runner)
        runner.logger.info(
            f'StructuredSparseTrainingHook: heads {self.head_density}, MLP {self.mlp_density} '
            f'after {what}{self._layers_logged(": ")}; updates every {self.update_interval} '
            f'iterations until iteration {self.last_update_iter(runner)}')
        self._log_scalars(runner, self.stats())

    def _adopt_restored(self) -> None:
        """Check the restored masks against the model's layers; move them to its device."""
        heads, neurons = self.head_masks, self.neuron_masks
        if len(heads) != len(self.blocks) or any(
                h.numel() != b.attn.num_heads or n.numel() != b.fc1.out_features
                for h, n, b in zip(heads, neurons, self.blocks)):
            raise ConfigError(f'{self.keys.prefix}: the checkpoint\'s head / neuron masks do '
                              f'not fit this model\'s layers')
        devices = [b.attn.qkv.weight.device for b in self.blocks]
        self.state.head_masks = [h.to(d) for h, d in zip(heads, devices)]
        self.state.neuron_masks = [n.to(d) for n, d in zip(neurons, devices)]

    def _before_step(self, runner, step: int) -> None:
        # record head scores in the score_iters iterations that end at an update
        nxt = step + (-step) % self.update_interval
        record = self.state.pending or (self.is_update_step(nxt, self.total_iters(runner))
                                        and nxt - step < self.score_iters)
        for b in self.blocks:
            b.attn.record_head_scores = record

    def _after_train(self, runner) -> None:
        for b in self.blocks:
            b.attn.record_head_scores = False
            b.attn.reset_head_scores()

    # ---- masks ----------------------------------------------------------------------------
    @torch.no_grad()
    def apply_masks(self) -> None:
        """Zero the qkv rows of removed heads and the fc1 rows / fc2 columns of removed
        neurons."""
        for b, (rows, fc1_rows, fc2_cols) in zip(self.blocks, self._factors):
            b.attn.qkv.weight.mul_(rows)
            b.fc1.weight.mul_(fc1_rows)
            b.fc2.weight.mul_(fc2_cols)

    def _update_heads(self, i: int, rate: float) -> Optional[int]:
        """Prune / regrow the heads of layer ``i`` from its recorded scores (averaged over
        ranks); the number of heads enabled, or None without scores."""
        attn, active = self.blocks[i].attn, self.head_masks[i]
        scores = attn.head_scores()
        attn.reset_head_scores()
        if scores is None:
            return None
        taylor, gnorm = (s.clone() for s in scores)
        all_reduce(taylor, op='mean')
        all_reduce(gnorm, op='mean')
        new, _ = dst.structured_prune_regrow(active, taylor.to(active.device),
                                             gnorm.to(active.device), rate)
        self.state.head_masks[i] = new
        return int((new & ~active).sum())

    def _update_neurons(self, i: int, rate: float) -> int:
        """Prune / regrow the MLP neurons of layer ``i``; the number enabled."""
        b, active = self.blocks[i], self.neuron_masks[i]
        prune = dst.neuron_l1_scores(b.fc1.weight, b.fc2.weight)
        if self.neuron_growth == 'random':
            grow = torch.rand(prune.numel(), generator=self.generator).to(prune.device)
        else:
            grow = dst.neuron_l1_scores(self._grads[f'{i}.fc1'], self._grads[f'{i}.fc2'])
        new, _ = dst.structured_prune_regrow(active, prune, grow, rate)
        self.state.neuron_masks[i] = new
        return int((new & ~active).sum())

    @torch.no_grad()
    def update_masks(self, runner, step: int) -> None:
        rate = self.death_rate_at(step, self.total_iters(runner))
        heads_changed = neurons_changed = 0
        skipped_heads = False
        for i in range(len(self.blocks)):
            n = self._update_heads(i, rate)
            skipped_heads |= n is None
            heads_changed += n or 0
            neurons_changed += self._update_neurons(i, rate)
        if skipped_heads:
            runner.logger.warning('StructuredSparseTrainingHook: no head scores were recorded '
                                  f'before update {self.num_updates + 1}: heads unchanged')
        self._finish_update(runner, step, death_rate=rate, new_heads=heads_changed,
                            new_neurons=neurons_changed)
        runner.logger.info(
            f'StructuredSparseTrainingHook: update {self.num_updates} at iteration {step}: '
            f'death rate {rate:.4f}, {heads_changed} heads and {neurons_changed} neurons '
            f'swapped{self._layers_logged("; ")}')

    # ---- what is logged -------------------------------------------------------------------
    def _layers_logged(self, sep: str) -> str:
        """``sep`` + the per-layer summary with ``log_layers``, else nothing."""
        return f'{sep}{self._layer_summary()}' if self.log_layers else ''

    def _layer_summary(self) -> str:
        return 'heads ' + ' '.join(''.join('1' if v else '0' for v in m.tolist())
                                   for m in self.head_masks) + \
            ', neurons ' + ' '.join(str(int(m.sum())) for m in self.neuron_masks)
