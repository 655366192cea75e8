"""SViTE's backbone: a ViT with per-head Taylor scores (S²ViTE) and a token selector (SViTE+).

:class:`SViTEVisionTransformer` is a
:class:`~mmsparse.models.layers.compact_vit.CompactVisionTransformer`
(per-layer sizes; by default the dense arch, state_dict-compatible with mmpretrain's
``VisionTransformer`` so model-zoo checkpoints load) whose attention layers can record
per-head first-order Taylor scores for
:class:`~mmsparse.engine.StructuredSparseTrainingHook`, and which optionally owns a
:class:`TokenSelector` (the only new keys: ``token_selector.score.weight/bias``).

Token selector (SViTE+), once, after the patch + position embedding and before block 0:

- training: a linear scorer gives a logit per patch token; a Gumbel top-k with straight-through
  gradients (:func:`~mmsparse.ops.tokens.gumbel_topk_st`, temperature ``tau``, annealed
  10 -> 0.1 by :class:`~mmsparse.engine.TokenSelectorTemperatureHook`) keeps ``k``
  tokens. ``train_mode='mask'`` (default) computes every token and gives the straight-through
  selection to every attention softmax as key weights (DynamicViT's
  :func:`~mmsparse.ops.tokens.softmax_with_policy`): the kept tokens never attend to the others,
  so they compute what inference computes, and the scorer gets a gradient for every token,
  kept or not (through its key weight). ``'gather'`` passes only the kept tokens on, multiplied
  by their straight-through weights (cheaper, but the tokens left out get no gradient of their
  own); ``'zero'`` multiplies the tokens by the 0/1 selection and keeps them all, as the
  original does (the zeroed tokens still act as attention keys, which inference does not have).
  The same hook anneals the scale of the Gumbel noise 1 -> 0 (``noise_scale``), so that the
  selection of the last iterations is the deterministic top-k that inference uses (with the
  original's constant noise the selection stays a random draw unless the scorer's logits grow
  far beyond the noise, and a deterministic top-k at test time then picks token sets the model
  was not trained on).
- inference: the ``k`` best-scored patch tokens (deterministic, no noise) are gathered and the
  others removed, so FLOPs and latency drop. The class token is always kept on top of ``k``.
"""
from typing import Optional, Tuple, Union

import torch
from mmengine.model import BaseModule
from torch import Tensor, nn

from mmsparse.errors import ConfigError
from mmsparse.ops.tokens import (batch_index_select, gumbel_topk_st, keep_count,
                                 policy_weighted_mean, select_topk_tokens)
from mmsparse.registry import MODELS
from mmsparse.validation import Keys
from ._vit_utils import vit_tokens
from .layers.compact_vit import CompactVisionTransformer

__all__ = ['TokenSelector', 'SViTEVisionTransformer']

_BACKBONE = Keys('model.backbone')


@MODELS.register_module()
class TokenSelector(BaseModule):
    """SViTE+'s learnable token selector: ``score = Linear(C, 1)`` and Gumbel top-k.

    Args:
        embed_dims: C.
        keep: patch tokens kept: an int count or a float ratio in (0, 1]
            (:func:`~mmsparse.ops.tokens.keep_count`).
        tau: Gumbel-softmax temperature (set every iteration by the temperature hook).
        train_mode: 'mask', 'gather' or 'zero' (see the module docstring).
    """
    TRAIN_MODES = ('mask', 'gather', 'zero')

    def __init__(self, embed_dims: int, keep: Union[int, float], tau: float = 1.0,
                 train_mode: str = 'mask', init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        # the selector's arguments are the backbone's token_* keys
        _BACKBONE.choice('token_train_mode', train_mode, self.TRAIN_MODES)
        _BACKBONE.number('token_tau', tau, 0, low_open=True)
        self.keep = keep
        self.tau = float(tau)
        self.noise_scale = 1.0  # set with tau by TokenSelectorTemperatureHook
        self.train_mode = train_mode
        self.score = nn.Linear(embed_dims, 1)
        nn.init.trunc_normal_(self.score.weight, std=.02)
        nn.init.zeros_(self.score.bias)

    def num_kept(self, num_tokens: int) -> int:
        """Patch tokens kept out of ``num_tokens``."""
        return keep_count(num_tokens, self.keep)

    def forward(self, x: Tensor,
                num_extra: int = 1) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
        """Select tokens.

        Args:
            x: (B, E + N, C) tokens, the E = ``num_extra`` leading ones (class token) always kept.

        Returns:
            ``(tokens, idx, policy)``. Inference and 'gather' training: tokens (B, E + K, C),
            idx (B, K) kept patch positions in ascending order, policy None. 'mask' training:
            all tokens (B, E + N, C), idx, and policy (B, E + N), the straight-through 0/1
            selection (1 for the extra tokens) for the attention. 'zero' training: the tokens
            times the selection (B, E + N, C), idx, policy None.
        """
        extra, patches = x[:, :num_extra], x[:, num_extra:]
        logits = self.score(patches).squeeze(-1)  # (B, N)
        k = self.num_kept(patches.shape[1])
        if not self.training:
            tokens, idx = select_topk_tokens(x, logits, k, num_extra, sort_positions=True)
            return tokens, idx, None
        mask, idx = gumbel_topk_st(logits, k, self.tau, noise=True,
                                   noise_scale=self.noise_scale)
        if self.train_mode == 'mask':
            policy = torch.cat([mask.new_ones(mask.shape[0], num_extra), mask], dim=1)
            return x, idx, policy
        if self.train_mode == 'zero':
            return torch.cat([extra, patches * mask.unsqueeze(-1)], dim=1), idx, None
        weights = batch_index_select(mask, idx).unsqueeze(-1)
        return torch.cat([extra, batch_index_select(patches, idx) * weights], dim=1), idx, None


@MODELS.register_module()
class SViTEVisionTransformer(CompactVisionTransformer):
    """The SViTE / S²ViTE / SViTE+ backbone.

    Args:
        arch: a ``VisionTransformer`` arch ('deit-tiny', 'deit-small', 'deit-base' or a dict).
        token_keep: None (no selector: SViTE / S²ViTE) or the patch tokens kept by the token
            selector (SViTE+): an int count in [1, N] or a ratio in (0, 1] (0.9 on DeiT-S
            keeps 176 of 196 patches + the class token = the original's 177 tokens).
        token_tau: initial Gumbel temperature (the temperature hook overrides it).
        token_train_mode: 'mask' (default), 'gather' or 'zero' (the original's zeroed tokens);
            see the module docstring.
        num_heads, head_dims, mlp_dims, skip_layers: per-layer sizes
            (:class:`CompactVisionTransformer`); default the dense arch.
        **kwargs: the other ``VisionTransformer`` arguments (``img_size``, ``patch_size``,
            ``out_type`` ('cls_token', 'raw' or 'avg_featmap' with a selector), ...).
    """

    def __init__(self, arch: Union[str, dict] = 'deit-small',
                 token_keep: Union[int, float, None] = None, token_tau: float = 1.0,
                 token_train_mode: str = 'mask', **kwargs) -> None:
        if token_keep is not None:
            _BACKBONE.require('out_type', kwargs.get('out_type', 'cls_token') != 'featmap',
                              "='featmap' is not possible with token_keep (removed tokens leave "
                              "no feature-map grid); use 'cls_token', 'raw' or 'avg_featmap'")
            _BACKBONE.require('with_cls_token', kwargs.get('with_cls_token', True),
                              'must be True with token_keep (the class token is the token that '
                              'is always kept)')
        super().__init__(arch=arch, **kwargs)
        self.token_selector = None
        if token_keep is not None:
            num_patches = self.patch_resolution[0] * self.patch_resolution[1]
            try:
                keep_count(num_patches, token_keep)
            except ValueError as e:
                raise ConfigError(f'{_BACKBONE.key("token_keep")}: {e} (this model has '
                                  f'{num_patches} patch tokens)') from None
            self.token_selector = TokenSelector(self.embed_dims, token_keep, tau=token_tau,
                                                train_mode=token_train_mode)

    def num_kept_tokens(self, num_patches: Optional[int] = None) -> Optional[int]:
        """Patch tokens kept at inference (None without a selector)."""
        if self.token_selector is None:
            return None
        n = num_patches or self.patch_resolution[0] * self.patch_resolution[1]
        return self.token_selector.num_kept(n)

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """Args: x images (B, C_in, H, W). Returns the ``out_indices`` features (tuple)."""
        if self.token_selector is None:
            return super().forward(x)
        x = vit_tokens(self, *self.patch_embed(x))
        x, _, policy = self.token_selector(x, self.num_extra_tokens)
        outs = []
        for i, layer in enumerate(self.layers):
            x = layer(x) if policy is None or isinstance(layer, nn.Identity) else \
                layer(x, policy)
            if i == len(self.layers) - 1 and self.final_norm:
                x = self.ln1(x)
            if i in self.out_indices:
                if policy is not None and self.out_type == 'avg_featmap':
                    e = self.num_extra_tokens
                    outs.append(self.ln2(policy_weighted_mean(x[:, e:], policy[:, e:])
                                         .squeeze(1)))
                else:
                    outs.append(self._format_output(x, None))
        return tuple(outs)
