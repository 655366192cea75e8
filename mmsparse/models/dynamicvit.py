"""DynamicViT (Rao et al., NeurIPS 2021): learned, per-image token pruning for plain ViTs.

Parts, all state_dict-compatible with mmpretrain's ``VisionTransformer`` (model-zoo DeiT
checkpoints load unchanged; the predictors ``backbone.predictors.<k>.*`` are the only new keys):

- the encoder layers are mmsparse's one :class:`~mmsparse.models.layers.EncoderLayer`
  (mmpretrain's keys ``layers.N.ln1``, ``layers.N.attn.qkv`` ...): fused attention without a
  policy, the policy-masked softmax with one.
- :class:`DynamicViTPredictor`: the prediction module (local + policy-weighted global features
  -> keep/drop log-probabilities).
- :class:`DynamicVisionTransformer`: the backbone. Training: Gumbel-softmax hard decisions
  (monotone, class token always kept) and policy-masked attention, every token still computed.
  Inference: top-k gather with fixed keep counts ``int(num_patches * ratio)``; the kept tokens
  follow the class token in order of descending score (as the original does), so batches stay
  rectangular, FLOPs are fixed and the output is deterministic.
- :class:`DynamicViTClassifier`: mmpretrain's ``ImageClassifier`` plus the DynamicViT losses
  (classification, keep-ratio, and distillation from a frozen dense teacher: KL on the logits,
  MSE on the tokens the student keeps), each logged by name.
"""
import copy
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule, ModuleList
from mmengine.model.weight_init import trunc_normal_
from mmpretrain.models.backbones.vision_transformer import VisionTransformer
from mmpretrain.models.classifiers import ImageClassifier
from torch import Tensor, nn

from mmsparse.errors import ConfigError
from mmsparse.ops.tokens import (batch_index_select, cumulative_keep_ratios, gumbel_keep_decision,
                                 keep_counts, keep_ratio_loss, masked_token_mse,
                                 policy_weighted_mean, random_keep_decision, select_topk_tokens)
from mmsparse.registry import MODELS
from mmsparse.validation import Keys
from ._vit_utils import vit_tokens
from .compose import (check_compact_weights, load_compact_weights, read_compact_checkpoint,
                      structured_backbone_cfg)
from .layers.compact_vit import CompactVisionTransformer
from .teacher import FrozenTeacherMixin

__all__ = ['DynamicViTPredictor', 'DynamicVisionTransformer', 'DynamicViTClassifier']

_BACKBONE = Keys('model.backbone')
_MODEL = Keys('model')


@MODELS.register_module()
class DynamicViTPredictor(BaseModule):
    """DynamicViT's prediction module (``PredictorLG``): keep/drop log-probabilities per token.

    ``in_conv`` = LayerNorm -> Linear(C, C) -> GELU; the first C/2 channels are local
    features, the last C/2 are averaged over the kept tokens (policy-weighted) into a global
    feature broadcast to every token; ``out_conv`` = Linear(C, C/2) -> GELU -> Linear(C/2, C/4)
    -> GELU -> Linear(C/4, 2) -> LogSoftmax. Keys match the original's ``score_predictor.<k>.*``.
    The first ``out_conv`` layer is applied to the local and global halves separately (the same
    result, with the global half computed once per sample rather than once per token).

    Args:
        embed_dims: C.
    """

    def __init__(self, embed_dims: int, init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        c = embed_dims
        self.in_conv = nn.Sequential(nn.LayerNorm(c), nn.Linear(c, c), nn.GELU())
        self.out_conv = nn.Sequential(
            nn.Linear(c, c // 2), nn.GELU(), nn.Linear(c // 2, c // 4), nn.GELU(),
            nn.Linear(c // 4, 2), nn.LogSoftmax(dim=-1))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor, policy: Optional[Tensor] = None) -> Tensor:
        """Args: x patch tokens (B, N, C); policy (B, N) current keep policy or None (all kept).

        Returns:
            (B, N, 2) log-probabilities: channel 0 keep, channel 1 drop.
        """
        oc = self.out_conv
        return oc[5](oc[4](self._hidden(x, policy)))

    def keep_score(self, x: Tensor) -> Tensor:
        """Inference ranking score: ``logit(keep) - logit(drop)``, all tokens kept so far.

        ``log p(keep) = -softplus(-(logit(keep) - logit(drop)))`` is increasing in this score,
        so top-k on it keeps the same tokens as top-k on the keep log-probability, without the
        LogSoftmax and with a one-output last layer.

        Args:
            x: patch tokens (B, N, C).

        Returns:
            (B, N) scores.
        """
        last = self.out_conv[4]
        # a (1, C/4) weight, not a (C/4,) one: ONNX export has no linear with a 1-d weight
        w = (last.weight[0] - last.weight[1]).unsqueeze(0)
        return F.linear(self._hidden(x), w, (last.bias[0] - last.bias[1]).unsqueeze(0))[..., 0]

    def _hidden(self, x: Tensor, policy: Optional[Tensor] = None) -> Tensor:
        """(B, N, C/4): ``out_conv`` up to its last linear layer, on local + global features."""
        x = self.in_conv(x)
        h = x.shape[-1] // 2
        glob = policy_weighted_mean(x[..., h:], policy)  # (B, 1, C - h)
        # out_conv[0] on [local, global broadcast] without building the concatenation: the
        # global half of the product is computed once per sample instead of once per token
        oc = self.out_conv  # indexed, not sliced: a slice builds a new Sequential every call
        fc = oc[0]
        # (in place: addmm's backward does not need its output, so autograd allows it)
        y = F.linear(x[..., :h], fc.weight[:, :h], fc.bias).add_(F.linear(glob, fc.weight[:, h:]))
        return oc[3](oc[2](oc[1](y)))


@MODELS.register_module()
class DynamicVisionTransformer(CompactVisionTransformer):
    """mmpretrain's ``VisionTransformer`` with DynamicViT token pruning.

    All of ``VisionTransformer``'s arguments (``arch='deit-tiny' | 'deit-small' | 'deit-base'``
    or a dict, ``img_size``, ``patch_size``, ``drop_path_rate``, ``out_type``, ``init_cfg`` ...)
    and state_dict keys are kept; the predictors (``predictors.<k>.*``) are the only new keys.
    It is the one compact ViT (:class:`~mmsparse.models.layers.compact_vit.
    CompactVisionTransformer`), so its layers may have their own sizes (``num_heads``,
    ``head_dims``, ``v_dims``, ``mlp_dims``, ``skip_layers``, ``remove_empty_branches``): token
    pruning on a UVC or S²ViTE compact model (see ``DynamicViTClassifier.compact_checkpoint``).
    ``pruning_loc`` counts the layers of this model (a UVC compact model has its skipped blocks
    removed, so its layers are renumbered; S²ViTE's skipped layers keep their index).

    Before block ``pruning_loc[k]`` a predictor scores the patch tokens (the output of block
    ``pruning_loc[k] - 1``) and stage k keeps ``keep_ratios[k]`` of the *original* patch tokens.

    - Training (``model.train()``): hard Gumbel-softmax decisions, multiplied by the previous
      stage's (a dropped token stays dropped); the class token is always kept; the blocks run
      on all tokens with policy-masked attention. :meth:`forward_with_aux` also returns the
      decisions and the final tokens (for the ratio and distillation losses).
    - Inference (``model.eval()``): keep the ``int(num_patches * keep_ratios[k])`` best-scored
      patch tokens (top-k gather); the token order becomes [class token, kept tokens by
      descending score]. The tokens are really dropped, so FLOPs counting sees fewer tokens.

    Args:
        arch: a ``VisionTransformer`` arch.
        pruning_loc: block indices before which tokens are pruned, strictly increasing in
            [1, num_layers - 1]. Default (3, 6, 9) as in the original for DeiT.
        keep_rate: rho in (0, 1]; the default keep ratios are rho, rho**2, rho**3, ...
        keep_ratios: explicit keep ratio per location (non-increasing, in (0, 1]); overrides
            the powers of ``keep_rate``.
        selector: 'predictor' (DynamicViT) or 'random' (baseline: the same keep counts, chosen
            uniformly at random in training and inference; no predictors are built).
        freeze_cls_pos: give ``cls_token`` and ``pos_embed`` ``requires_grad=False`` (the
            original excludes them from the optimizer).
        gumbel_tau: Gumbel-softmax temperature (original: 1).
        policy_max_gap: the masked attention's softmax (see
            :func:`~mmsparse.ops.tokens.softmax_with_policy`): None (default) is the original's
            formula (shift by the maximum over all keys; values and gradients as the original);
            a number >= 0 shifts by the maximum over the kept keys and caps the policy gradient
            of dropped keys above them at that gap.
        **kwargs: the other ``VisionTransformer`` arguments. ``out_type`` may be 'cls_token',
            'raw' or 'avg_featmap' (a 'featmap' grid does not exist once tokens are dropped).
    """
    OUT_TYPES = {'raw', 'cls_token', 'avg_featmap'}
    SELECTORS = ('predictor', 'random')
    # arguments of this class that a dense VisionTransformer does not take
    DYNAMIC_KEYS = ('pruning_loc', 'keep_rate', 'keep_ratios', 'selector', 'freeze_cls_pos',
                    'gumbel_tau', 'policy_max_gap')

    def __init__(self, arch: Union[str, dict] = 'deit-small',
                 pruning_loc: Sequence[int] = (3, 6, 9), keep_rate: float = 0.7,
                 keep_ratios: Optional[Sequence[float]] = None, selector: str = 'predictor',
                 freeze_cls_pos: bool = True, gumbel_tau: float = 1.0,
                 policy_max_gap: Optional[float] = None, **kwargs) -> None:
        out_type = kwargs.get('out_type', 'cls_token')
        if out_type not in self.OUT_TYPES:
            _BACKBONE.fail('out_type', f'must be one of {sorted(self.OUT_TYPES)} for '
                           f'DynamicVisionTransformer, got {out_type!r} (pruned tokens leave no '
                           f'feature map grid)')
        _BACKBONE.require('with_cls_token', kwargs.get('with_cls_token', True),
                          'must be True for DynamicVisionTransformer (the class token is the '
                          'token that is always kept)')
        _BACKBONE.choice('selector', selector, self.SELECTORS)
        _BACKBONE.number('gumbel_tau', gumbel_tau, 0, low_open=True)
        if policy_max_gap is not None:
            _BACKBONE.number('policy_max_gap', policy_max_gap, 0)
            policy_max_gap = float(policy_max_gap)
        # read by _layer_cfgs during CompactVisionTransformer.__init__ (before nn.Module's)
        object.__setattr__(self, '_policy_max_gap', policy_max_gap)
        super().__init__(arch=arch, **kwargs)
        self.pruning_loc = self._check_pruning_loc(pruning_loc, self.num_layers)
        self.keep_rate = keep_rate
        self.keep_ratios = self._check_keep_ratios(keep_rate, keep_ratios, len(self.pruning_loc))
        self.num_patches = self.patch_resolution[0] * self.patch_resolution[1]
        try:
            self.eval_keep_counts = keep_counts(self.num_patches, self.keep_ratios)
        except ValueError as e:
            key = 'keep_ratios' if keep_ratios is not None else 'keep_rate'
            value = keep_ratios if keep_ratios is not None else keep_rate
            raise ConfigError(f'{_BACKBONE.key(key)}={value} with pruning_loc='
                              f'{self.pruning_loc}: {e}; raise {key} or use fewer pruning '
                              f'locations') from None
        self.selector = selector
        self.gumbel_tau = gumbel_tau
        # None, or the kept_indices of the last inference forward (record_kept_tokens)
        self.kept_tokens: Optional[List[Tensor]] = None
        self.predictors = ModuleList(
            [DynamicViTPredictor(self.embed_dims) for _ in self.pruning_loc]
        ) if selector == 'predictor' else None
        if freeze_cls_pos:
            self.cls_token.requires_grad_(False)
            self.pos_embed.requires_grad_(False)

    @staticmethod
    def _check_pruning_loc(pruning_loc: Sequence[int], depth: int) -> List[int]:
        locs = list(pruning_loc) if isinstance(pruning_loc, (list, tuple)) else None
        ok = (locs is not None and len(locs) > 0
              and all(isinstance(i, int) and not isinstance(i, bool) for i in locs)
              and all(1 <= i <= depth - 1 for i in locs)
              and all(a < b for a, b in zip(locs, locs[1:])))
        _BACKBONE.require('pruning_loc', ok, f'must be a non-empty list of strictly increasing '
                          f'block indices in [1, depth-1] = [1, {depth - 1}], got '
                          f'{pruning_loc!r}')
        return locs

    @staticmethod
    def _check_keep_ratios(keep_rate: float, keep_ratios: Optional[Sequence[float]],
                           num_stages: int) -> List[float]:
        ok = isinstance(keep_rate, (int, float)) and not isinstance(keep_rate, bool) and \
            0.0 < keep_rate <= 1.0
        _BACKBONE.require('keep_rate', ok, f'must be in (0, 1], got {keep_rate!r}')
        if keep_ratios is None:
            return cumulative_keep_ratios(float(keep_rate), num_stages)
        ratios = list(keep_ratios)
        ok = (len(ratios) == num_stages and all(0.0 < r <= 1.0 for r in ratios)
              and not any(b > a for a, b in zip(ratios, ratios[1:])))
        _BACKBONE.require('keep_ratios', ok, f'must be {num_stages} non-increasing values in '
                          f'(0, 1] (one per pruning_loc), got {keep_ratios!r}')
        return [float(r) for r in ratios]

    def record_kept_tokens(self, enabled: bool = True) -> None:
        """Keep, after each inference forward, :attr:`kept_tokens`: ``aux['kept_indices']`` of
        :meth:`forward_with_aux`, one (B, K_k) tensor per stage (e.g. for the kept-token check of
        an ONNX export, whose graph runs ``forward``)."""
        self.kept_tokens = [] if enabled else None

    def _layer_cfgs(self, kwargs: dict, **per_layer: Sequence) -> List[dict]:
        # every layer's attention takes the keep policy with the configured softmax
        return super()._layer_cfgs(
            kwargs, policy_max_gap=[self._policy_max_gap] * self.num_layers, **per_layer)

    def train(self, mode: bool = True) -> 'DynamicVisionTransformer':
        super().train(mode)  # mmpretrain's BaseBackbone.train returns None
        return self

    def keep_counts(self, num_patches: Optional[int] = None) -> List[int]:
        """Patch tokens kept after each pruning location at inference (default: img_size)."""
        return keep_counts(num_patches or self.num_patches, self.keep_ratios)

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """Args: x images (B, C_in, H, W). Returns the ``out_indices`` features (tuple)."""
        return self.forward_with_aux(x)[0]

    def forward_with_aux(self, x: Tensor) -> Tuple[Tuple[Tensor, ...], Dict[str, object]]:
        """The forward pass, with what the losses and pictures need.

        Returns:
            ``(outs, aux)``. ``aux['tokens']``: the final (normed) tokens; in training
            (B, 1 + N, C) in the input order, dropped tokens included; at inference
            (B, 1 + K_last, C). ``aux['decisions']``: training only, one (B, N) 0/1 decision
            per stage (cumulative, differentiable for the predictor). ``aux['kept_indices']``:
            inference only, one (B, K_k) tensor per stage with the positions (0..N-1, row-major
            over the patch grid) of the kept patch tokens, in the order they are kept.
        """
        B = x.shape[0]
        x = vit_tokens(self, *self.patch_embed(x))
        counts = keep_counts(x.shape[1] - 1, self.keep_ratios)

        masked = self.training
        decision: Optional[Tensor] = None  # (B, N), training
        policy: Optional[Tensor] = None  # (B, 1 + N), training
        decisions: List[Tensor] = []
        kept: List[Tensor] = []
        positions: Optional[Tensor] = None
        outs = []
        stage = 0
        for i, layer in enumerate(self.layers):
            if stage < len(self.pruning_loc) and i == self.pruning_loc[stage]:
                if masked:
                    decision = self._train_decision(stage, x, decision, counts[stage])
                    decisions.append(decision)
                    policy = torch.cat([decision.new_ones(B, 1), decision], dim=1)
                else:
                    x, idx = select_topk_tokens(x, self._scores(stage, x), counts[stage])
                    positions = idx if positions is None else batch_index_select(positions, idx)
                    kept.append(positions)
                stage += 1
            if not isinstance(layer, nn.Identity):  # a skipped (S²ViTE) layer passes x on
                x = layer(x, policy)
            if i == len(self.layers) - 1 and self.final_norm:
                x = self.ln1(x)
            if i in self.out_indices:
                outs.append(self._format(x, decision))
        aux = dict(tokens=x, decisions=decisions, kept_indices=kept)
        if not masked and self.kept_tokens is not None:
            self.kept_tokens = list(kept)
        return tuple(outs), aux

    def _train_decision(self, stage: int, x: Tensor, prev: Optional[Tensor],
                        num_keep: int) -> Tensor:
        if self.selector == 'random':
            if prev is None:
                prev = x.new_ones(x.shape[0], x.shape[1] - 1)
            return random_keep_decision(prev, num_keep)
        log_probs = self.predictors[stage](x[:, 1:], prev)
        return gumbel_keep_decision(log_probs, prev, tau=self.gumbel_tau)

    def _scores(self, stage: int, x: Tensor) -> Tensor:
        if self.selector == 'random':
            return torch.rand(x.shape[0], x.shape[1] - 1, device=x.device)
        return self.predictors[stage].keep_score(x[:, 1:])

    def _format(self, x: Tensor, decision: Optional[Tensor]) -> Tensor:
        if self.out_type == 'raw':
            return x
        if self.out_type == 'cls_token':
            return x[:, 0]
        return self.ln2(policy_weighted_mean(x[:, 1:], decision).squeeze(1))


@MODELS.register_module()
class DynamicViTClassifier(FrozenTeacherMixin, ImageClassifier):
    """mmpretrain's ``ImageClassifier`` with DynamicViT's training losses.

    ``loss`` returns ``loss_cls`` (the head's loss), ``loss_ratio`` (``ratio_weight`` x
    :func:`~mmsparse.ops.tokens.keep_ratio_loss`), ``loss_distill_cls`` (``distill_weight`` x
    KL(teacher || student) of the logits, batch mean, T = 1) and ``loss_distill_token``
    (``token_distill_weight`` x MSE of the final patch tokens that the student keeps), plus the
    mean keep fraction of each stage (``keep_ratio_<k>``, logged, not a loss). Prediction and
    ``mode='tensor'`` are ``ImageClassifier``'s.

    The teacher is a frozen dense ``ImageClassifier`` of the student's arch, kept in eval mode.
    It is not a submodule: it is not in ``parameters()`` (so not in the optimizer or in
    parameter counts) and is not moved by ``train()``; ``.to()``/``.cuda()`` do move it.
    Its weights are, in order: ``teacher_checkpoint`` if given (loaded by ``init_weights``);
    else a copy of the student's backbone and head when the first training loss is computed
    (i.e. after ``load_from`` / ``init_cfg``), saved in checkpoints as ``teacher.*`` so that a
    resumed run distils from the same teacher.

    Args:
        backbone: a :class:`DynamicVisionTransformer` config.
        neck: must be None (the head reads the class token).
        head: a ``VisionTransformerClsHead``-like head config.
        teacher: None (a dense ``mmpretrain.VisionTransformer`` copy of ``backbone``'s config
            with the same head), a model config dict, or the path of a config file whose
            ``model`` is the teacher. Its backbone must be a ``VisionTransformer`` of the
            student's arch, patch grid and classes.
        teacher_checkpoint: checkpoint (path or URL) of the teacher.
        compact_checkpoint: None, or a compact checkpoint (UVC / S²ViTE, with
            ``meta['compact_structure']``): the backbone gets its structure (arch, per-layer
            heads, value dims, MLP widths, skipped layers) and starts from its weights in
            ``init_weights``; only the predictors are new (see :mod:`mmsparse.models.compose`).
            The default teacher is then the compact model as loaded; a dense teacher is a
            ``teacher`` config with its ``teacher_checkpoint``.
        distill: build a teacher and add the two distillation losses.
        ratio_weight: weight of the keep-ratio loss (original: 2.0; 5.0 for DeiT-B).
        distill_weight: weight of the logit KL (original 0.5).
        token_distill_weight: weight of the token MSE (original 0.5).
        **kwargs: ``ImageClassifier``'s ``pretrained``, ``train_cfg``, ``data_preprocessor``,
            ``init_cfg``.
    """
    # the teacher (FrozenTeacherMixin)
    _teacher_name = 'DynamicViT'
    _student_only_keys = DynamicVisionTransformer.DYNAMIC_KEYS
    _save_loaded_teacher = False  # a teacher_checkpoint teacher is loaded again by init_weights

    def __init__(self, backbone: dict, neck: Optional[dict] = None, head: Optional[dict] = None,
                 teacher: Optional[Union[str, dict]] = None,
                 teacher_checkpoint: Optional[str] = None,
                 compact_checkpoint: Optional[str] = None, distill: bool = True,
                 ratio_weight: float = 2.0, distill_weight: float = 0.5,
                 token_distill_weight: float = 0.5, **kwargs) -> None:
        for name, w in (('ratio_weight', ratio_weight), ('distill_weight', distill_weight),
                        ('token_distill_weight', token_distill_weight)):
            _MODEL.number(name, w, 0)
        _MODEL.require('neck', neck is None, f'must be None for DynamicViTClassifier (the head '
                       f'reads the class token), got {neck!r}')
        self.compact_checkpoint = compact_checkpoint
        compact_sd = None
        if compact_checkpoint is not None:
            _MODEL.require('backbone', isinstance(backbone, dict), 'must be a config dict with '
                           'model.compact_checkpoint (the checkpoint sets its layer sizes)')
            structure, compact_sd = read_compact_checkpoint(compact_checkpoint,
                                                            _MODEL.key('compact_checkpoint'))
            backbone = structured_backbone_cfg(backbone, structure,
                                               _MODEL.key('compact_checkpoint'))
        backbone_cfg = copy.deepcopy(backbone) if isinstance(backbone, dict) else None
        head_cfg = copy.deepcopy(head) if isinstance(head, dict) else None
        super().__init__(backbone, neck=None, head=head, **kwargs)
        if not isinstance(self.backbone, DynamicVisionTransformer):
            _MODEL.fail('backbone.type', f'must be mmsparse.DynamicVisionTransformer, got '
                        f'{type(self.backbone).__name__}')
        self.ratio_weight = ratio_weight
        self.distill_weight = distill_weight
        self.token_distill_weight = token_distill_weight
        if distill and self.backbone.out_type != 'cls_token':
            _MODEL.fail('backbone.out_type', f"must be 'cls_token': distillation needs "
                        f"backbone.out_type='cls_token', got {self.backbone.out_type!r} (or set "
                        f"model.distill=False)")
        self._init_teacher(teacher, teacher_checkpoint, backbone_cfg, head_cfg, build=distill)
        if compact_sd is not None:  # shapes checked now, loaded by init_weights
            check_compact_weights(self, compact_sd, self._fresh_prefixes(),
                                  _MODEL.key('compact_checkpoint'))
            if self.teacher is not None and teacher_checkpoint is None:
                self._check_teacher_copy()

    def _check_teacher_copy(self) -> None:
        """A teacher without ``teacher_checkpoint`` is a copy of the student: its weights must
        have the compact student's shapes (a dense teacher config needs its checkpoint)."""
        own = self.teacher.state_dict()
        sd = self._student_dense_state()
        wrong = sorted(k for k in set(own) | set(sd)
                       if k not in own or k not in sd or own[k].shape != sd[k].shape)
        if wrong:
            raise ConfigError(f'model.teacher: its weights do not fit the compact student\'s '
                              f'({len(wrong)} differ, e.g. {wrong[0]}), so it cannot be a copy of '
                              f'it: give model.teacher_checkpoint (the weights of the model '
                              f'model.teacher describes), or leave model.teacher=None (the '
                              f'compact model as loaded)')

    def _fresh_prefixes(self) -> Tuple[str, ...]:
        """The weights a compact start does not hold: the token-pruning modules."""
        return ('backbone.predictors.', )

    def init_weights(self) -> None:
        """The configured initialisation; then the compact checkpoint's weights (if any)."""
        super().init_weights()
        if self.compact_checkpoint is not None:
            load_compact_weights(self, self.compact_checkpoint, self._fresh_prefixes(),
                                 _MODEL.key('compact_checkpoint'))

    # ---- the teacher -------------------------------------------------------------------------
    def _adapt_teacher_cfg(self, cfg: dict) -> dict:
        # the losses read the teacher's final tokens and feed its class token to its head
        if cfg.get('neck') is not None:
            raise ConfigError('model.teacher: the teacher must have neck=None')
        cfg['backbone'] = dict(cfg['backbone'], out_type='raw', out_indices=-1)
        return cfg

    def _check_teacher(self, model: nn.Module) -> None:
        tb, sb = getattr(model, 'backbone', None), self.backbone
        if not isinstance(tb, VisionTransformer) or isinstance(tb, DynamicVisionTransformer):
            raise ConfigError(f'model.teacher: backbone must be a dense (mmpretrain) '
                              f'VisionTransformer, got {type(tb).__name__}')
        # the losses compare logits and final tokens: the width and the token grid must agree
        # (a compact student's teacher may be the dense model it was compacted from)
        keys = ('embed_dims', ) if self.compact_checkpoint is not None else \
            ('embed_dims', 'num_layers', 'num_heads', 'feedforward_channels')
        t_arch = {k: tb.arch_settings.get(k) for k in keys}
        s_arch = {k: sb.arch_settings.get(k) for k in keys}
        if t_arch != s_arch or tuple(tb.patch_resolution) != tuple(sb.patch_resolution):
            raise ConfigError(f'model.teacher: backbone arch {t_arch} with patch grid '
                              f'{tuple(tb.patch_resolution)} does not match the student\'s '
                              f'{s_arch} with {tuple(sb.patch_resolution)}; the teacher must be '
                              f'the dense model of the same arch (e.g. arch=\'deit-small\' for '
                              f'DynamicViT-DeiT-S), or leave teacher=None')
        super()._check_teacher(model)

    def _student_dense_state(self) -> Dict[str, Tensor]:
        # strict both ways: every backbone and head weight but the predictors' is the teacher's
        sd = {f'backbone.{k}': v for k, v in self.backbone.state_dict().items()
              if not k.startswith('predictors.')}
        sd.update({f'head.{k}': v for k, v in self.head.state_dict().items()})
        return sd

    @torch.no_grad()
    def teacher_forward(self, inputs: Tensor) -> Tuple[Tensor, Tensor]:
        """Teacher logits (B, classes) and final normed tokens (B, 1 + N, C)."""
        teacher = self._ensure_teacher()
        tokens = teacher.backbone(inputs)[-1]
        return teacher.head((tokens[:, 0], )), tokens

    # ---- losses ------------------------------------------------------------------------------
    def loss(self, inputs: Tensor, data_samples: list) -> Dict[str, Tensor]:
        """The DynamicViT losses of a batch (see the class docstring)."""
        feats, aux = self.backbone.forward_with_aux(inputs)
        losses = {}
        head_losses = self.head.loss(feats, data_samples)
        losses['loss_cls'] = head_losses.pop('loss')
        losses.update(head_losses)
        decisions = aux['decisions']
        if self.backbone.selector == 'predictor' and decisions:
            losses['loss_ratio'] = self.ratio_weight * keep_ratio_loss(
                decisions, self.backbone.keep_ratios[:len(decisions)])
        if self.teacher is not None:
            t_logits, t_tokens = self.teacher_forward(inputs)
            logits = self.head(feats)
            losses['loss_distill_cls'] = self.distill_weight * F.kl_div(
                F.log_softmax(logits.float(), dim=-1), F.log_softmax(t_logits.float(), dim=-1),
                reduction='batchmean', log_target=True)
            losses['loss_distill_token'] = self.token_distill_weight * masked_token_mse(
                aux['tokens'][:, 1:], t_tokens[:, 1:], decisions[-1])
        for k, d in enumerate(decisions):
            losses[f'keep_ratio_{k}'] = d.detach().float().mean()
        return losses
