"""The one multi-head self-attention of mmsparse's ViTs (in the style of timm's ``Attention``).

:class:`Attention` has mmpretrain ``MultiheadAttention``'s parameters and state_dict keys
(``qkv``, ``proj``, ``gamma1``), so model-zoo and existing mmsparse checkpoints load unchanged.
By default it is that layer and runs the fused ``F.scaled_dot_product_attention``. It also
covers what mmsparse's methods change in it:

- a key policy (DynamicViT / SViTE+ training): ``forward(x, policy)`` computes the attention
  matrix explicitly and normalises it with :func:`~mmsparse.ops.tokens.softmax_with_policy`;
- kept heads and per-head value dims (UVC, S²ViTE compaction): ``num_heads`` may be any
  number >= 0 of heads of ``head_dims`` query / key channels, each with its own value
  (= output) width ``v_dims[h]``; ``forward(x, v_mask=...)`` masks value dims (UVC search);
- head-importance capture (S²ViTE): with ``record_head_scores = True`` the layer accumulates
  per-head first-order Taylor scores in the backward pass (:meth:`head_scores`).

Shapes: B batch, N tokens, C ``embed_dims``, H heads, d ``head_dims``, d_h ``v_dims[h]``.
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmcv.cnn.bricks.drop import build_dropout
from mmengine.model import BaseModule
from mmpretrain.models.utils import LayerScale
from torch import Tensor, nn

from mmsparse.ops.dst import head_taylor_scores
from mmsparse.ops.tokens import softmax_with_policy
from mmsparse.validation import Keys

__all__ = ['Attention', 'head_groups']

_KEYS = Keys('model.backbone')


def head_groups(v_dims: Sequence[int]) -> List[Tuple[int, int, int, int]]:
    """Runs of consecutive heads with equal value dims (each run is one fused attention call).

    Returns:
        ``(first_head, num_heads, v_dim, first_value_column)`` per run.
    """
    groups, col, h = [], 0, 0
    while h < len(v_dims):
        n = 1
        while h + n < len(v_dims) and v_dims[h + n] == v_dims[h]:
            n += 1
        groups.append((h, n, int(v_dims[h]), col))
        col += n * int(v_dims[h])
        h += n
    return groups


class Attention(BaseModule):
    """Multi-head self-attention with free head count, head width and per-head value dims.

    ``qkv`` maps C to ``2 * H * d + sum(v_dims)`` channels: all queries (head by head), all
    keys, then the values head by head; ``proj`` maps ``sum(v_dims)`` to C. With
    ``H * d == C`` and ``v_dims`` all ``d`` (the default) this is mmpretrain's
    ``MultiheadAttention``: same keys, shapes and outputs.

    Args:
        embed_dims: C.
        num_heads: H >= 0. With 0 heads the branch outputs ``proj.bias`` (after the
            LayerScale and dropouts) for every token.
        head_dims: d >= 1, query / key channels per head (the softmax scale is d ** -0.5);
            default ``C // H``.
        v_dims: value channels per head (H values >= 1); default ``[d] * H``. Consecutive
            heads with equal value dims run in one fused call.
        attn_drop: dropout on the attention weights (training only).
        proj_drop: dropout after ``proj``.
        dropout_layer: the residual-branch dropout (DropPath) config.
        qkv_bias: bias in ``qkv``.
        layer_scale_init_value: > 0 adds a LayerScale ``gamma1``.
        policy_max_gap: the policy-gradient clip of
            :func:`~mmsparse.ops.tokens.softmax_with_policy` (policy path only); None: the
            original DynamicViT formula (shift by the maximum over all keys, no clip). The layer
            defaults to mmsparse's capped variant (0), which SViTE+'s policy path uses;
            :class:`~mmsparse.models.DynamicVisionTransformer` passes its own default, None.
        init_cfg: MMEngine init config.

    Attributes:
        record_head_scores: set True (e.g. by the S²ViTE hook) to accumulate per-head Taylor
            scores in every training backward pass (:meth:`head_scores`).
    """

    def __init__(self, embed_dims: int, num_heads: int, head_dims: Optional[int] = None,
                 v_dims: Optional[Sequence[int]] = None, attn_drop: float = 0.,
                 proj_drop: float = 0., dropout_layer: Optional[dict] = None,
                 qkv_bias: bool = True, layer_scale_init_value: float = 0.,
                 policy_max_gap: Optional[float] = 0., init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        _KEYS.number('num_heads', num_heads, 0, integer=True)
        if head_dims is None:
            head_dims = embed_dims // max(num_heads, 1)
        _KEYS.number('head_dims', head_dims, 1, integer=True)
        v_dims = [head_dims] * num_heads if v_dims is None else [int(d) for d in v_dims]
        _KEYS.require('v_dims', len(v_dims) == num_heads and all(d >= 1 for d in v_dims),
                      f'must be {num_heads} ints >= 1 (one per head), got {v_dims!r}')
        if policy_max_gap is not None:
            _KEYS.number('policy_max_gap', policy_max_gap, 0)
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.head_dims = head_dims
        self.v_dims = v_dims
        self.qk_channels = num_heads * head_dims
        self.v_channels = sum(v_dims)
        self.groups = head_groups(v_dims)
        # mmpretrain's qkv layout: one reshape to (3, H, d) splits q, k and v
        self.uniform = all(d == head_dims for d in v_dims)
        self.scale = head_dims ** -0.5
        self.attn_drop = attn_drop
        self.policy_max_gap = None if policy_max_gap is None else float(policy_max_gap)
        self.qkv = nn.Linear(embed_dims, 2 * self.qk_channels + self.v_channels, bias=qkv_bias)
        self.proj = nn.Linear(self.v_channels, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop)
        self.out_drop = build_dropout(dropout_layer or dict(type='Dropout', drop_prob=0.))
        self.gamma1 = LayerScale(embed_dims, layer_scale_init_value=layer_scale_init_value) \
            if layer_scale_init_value > 0 else nn.Identity()
        # head scores (S²ViTE): off unless a hook turns them on; one (taylor, grad_norm) sum
        # per head group
        self.record_head_scores = False
        self._score_sums: List[Optional[Tuple[Tensor, Tensor]]] = [None] * len(self.groups)
        self._score_count = 0

    def forward(self, x: Tensor, policy: Optional[Tensor] = None,
                v_mask: Optional[Tensor] = None) -> Tensor:
        """Self-attention of the tokens.

        Args:
            x: tokens (B, N, C).
            policy: None (fused attention), or (B, N) key weights in [0, 1]: 0 = the token is
                not attended to, except by itself (explicit path,
                :func:`~mmsparse.ops.tokens.softmax_with_policy`).
            v_mask: None, or (H, d) weights of the head outputs (equal value dims only): 0 at
                ``[h, j]`` equals removing value row j of head h from ``qkv`` and its column
                from ``proj`` (UVC).

        Returns:
            (B, N, C).
        """
        B, N, _ = x.shape
        if self.num_heads == 0:
            out = self.proj.bias.expand(B, N, self.embed_dims)
            return self.out_drop(self.gamma1(self.proj_drop(out)))
        if v_mask is not None and not self.uniform:
            raise ValueError('v_mask needs equal value dims in every head (v_dims == head_dims)')
        q, k, values = self._split_qkv(self.qkv(x), B, N)
        drop = self.attn_drop if self.training else 0.
        attn = None
        if policy is not None:
            attn = softmax_with_policy((q * self.scale) @ k.transpose(-2, -1), policy,
                                       max_gap=self.policy_max_gap)
            if drop > 0:
                attn = F.dropout(attn, p=drop)
        outs = []
        for g, ((h0, nh, d, _), v) in enumerate(zip(self.groups, values)):
            # (one group, the usual case: the slices are the whole tensors, as views)
            if attn is not None:
                o = attn[:, h0:h0 + nh] @ v
            else:  # (B, n_g, N, d_g)
                o = F.scaled_dot_product_attention(q[:, h0:h0 + nh], k[:, h0:h0 + nh], v,
                                                   dropout_p=drop)
            if v_mask is not None:
                o = o * v_mask.to(o.dtype).unsqueeze(1)  # (B, H, N, d) * (H, 1, d)
            if self.record_head_scores and self.training and o.requires_grad:
                o.register_hook(self._make_score_hook(g, o.detach()))
            outs.append(o.transpose(1, 2).reshape(B, N, nh * d))
        out = self.proj(outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1))
        return self.out_drop(self.gamma1(self.proj_drop(out)))

    def _split_qkv(self, qkv: Tensor, B: int, N: int) -> Tuple[Tensor, Tensor, List[Tensor]]:
        """q, k (B, H, N, d) and the values of each head group (B, n_g, N, d_g)."""
        H, d = self.num_heads, self.head_dims
        if self.uniform:
            qkv = qkv.reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4)
            return qkv[0], qkv[1], [qkv[2]]
        qk = self.qk_channels
        q = qkv[..., :qk].reshape(B, N, H, d).transpose(1, 2)
        k = qkv[..., qk:2 * qk].reshape(B, N, H, d).transpose(1, 2)
        v = qkv[..., 2 * qk:]
        values = [v[..., c0:c0 + nh * dv].reshape(B, N, nh, dv).transpose(1, 2)
                  for _, nh, dv, c0 in self.groups]
        return q, k, values

    # ---- head scores (S²ViTE) ----------------------------------------------------------------
    def _make_score_hook(self, group: int, out: Tensor):
        def hook(grad: Tensor) -> None:
            taylor, gnorm = head_taylor_scores(out, grad)
            sums = self._score_sums[group]
            self._score_sums[group] = (taylor, gnorm) if sums is None else \
                (sums[0] + taylor, sums[1] + gnorm)
            if group == 0:  # one backward pass visits every group once
                self._score_count += 1
        return hook

    def head_scores(self) -> Optional[Tuple[Tensor, Tensor]]:
        """Mean per-head ``(taylor, grad_norm)`` (each (H,)) over the recorded backward
        passes since :meth:`reset_head_scores`, or None if none was recorded."""
        if self._score_count == 0 or any(s is None for s in self._score_sums):
            return None
        sums = self._score_sums
        taylor = sums[0][0] if len(sums) == 1 else torch.cat([s[0] for s in sums])
        gnorm = sums[0][1] if len(sums) == 1 else torch.cat([s[1] for s in sums])
        return taylor / self._score_count, gnorm / self._score_count

    def reset_head_scores(self) -> None:
        """Forget the recorded head scores."""
        self._score_sums = [None] * len(self.groups)
        self._score_count = 0

    def extra_repr(self) -> str:
        dims = '' if self.uniform else f', v_dims={self.v_dims}'
        return f'num_heads={self.num_heads}, head_dims={self.head_dims}{dims}'
