"""The one ViT encoder layer of mmsparse (mmpretrain ``TransformerEncoderLayer``'s keys).

:class:`EncoderLayer` is pre-norm ``x + attn(ln1(x))`` then ``x + ffn(ln2(x))`` with
mmpretrain's keys (``ln1``, ``attn.qkv``, ``attn.proj``, ``attn.gamma1.weight``, ``ln2``,
``ffn.layers.0.0`` (fc1), ``ffn.layers.1`` (fc2), ``ffn.gamma2.weight``), so model-zoo and
existing mmsparse checkpoints load unchanged. The MLP is mmcv's ``FFN``; its internals are
reached through the named accessors :attr:`EncoderLayer.fc1` / :attr:`EncoderLayer.fc2` /
:attr:`EncoderLayer.act` rather than by index.

Shapes: B batch, N tokens, C ``embed_dims``, F ``feedforward_channels``.
"""
from typing import Optional, Sequence

from mmcv.cnn.bricks.transformer import FFN
from mmengine.model import BaseModule
from mmpretrain.models.utils import build_norm_layer
from torch import Tensor, nn

from .attention import Attention

__all__ = ['EncoderLayer']


class EncoderLayer(BaseModule):
    """One pre-norm ViT block: :class:`~.attention.Attention` and a 2-layer MLP.

    Same arguments (plus the per-layer sizes), structure, keys and initialisation as
    mmpretrain's ``TransformerEncoderLayer``.

    Args:
        embed_dims: C.
        num_heads: attention heads (>= 0).
        feedforward_channels: F, MLP hidden width (>= 0).
        head_dims: query / key channels per head (default ``C // num_heads``).
        v_dims: value channels per head (default ``head_dims`` each).
        layer_scale_init_value: > 0 adds LayerScales ``attn.gamma1`` / ``ffn.gamma2``.
        drop_rate: dropout after ``attn.proj`` and in the MLP.
        attn_drop_rate: dropout on the attention weights.
        drop_path_rate: stochastic depth of both residual branches.
        num_fcs: MLP layers (2; :attr:`fc1` / :attr:`fc2` / neuron masks need 2).
        qkv_bias: bias in ``attn.qkv``.
        act_cfg: MLP activation.
        norm_cfg: the LayerNorm config.
        policy_max_gap: passed to :class:`~.attention.Attention` (policy path; None: the
            original DynamicViT formula).
        with_attn: False: no attention branch (no ``ln1`` / ``attn`` keys, a removed branch).
        with_ffn: False: no MLP branch (no ``ln2`` / ``ffn`` keys).
        init_cfg: MMEngine init config.
    """

    def __init__(self, embed_dims: int, num_heads: int, feedforward_channels: int,
                 head_dims: Optional[int] = None, v_dims: Optional[Sequence[int]] = None,
                 layer_scale_init_value: float = 0., drop_rate: float = 0.,
                 attn_drop_rate: float = 0., drop_path_rate: float = 0., num_fcs: int = 2,
                 qkv_bias: bool = True, act_cfg: dict = dict(type='GELU'),
                 norm_cfg: dict = dict(type='LN'), policy_max_gap: Optional[float] = 0.,
                 with_attn: bool = True, with_ffn: bool = True,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.embed_dims = embed_dims
        drop_path = dict(type='DropPath', drop_prob=drop_path_rate)
        self.ln1 = self.attn = self.ln2 = self.ffn = None
        if with_attn:
            self.ln1 = build_norm_layer(norm_cfg, embed_dims)
            self.attn = Attention(
                embed_dims, num_heads, head_dims=head_dims, v_dims=v_dims,
                attn_drop=attn_drop_rate, proj_drop=drop_rate, dropout_layer=drop_path,
                qkv_bias=qkv_bias, layer_scale_init_value=layer_scale_init_value,
                policy_max_gap=policy_max_gap)
        if with_ffn:
            self.ln2 = build_norm_layer(norm_cfg, embed_dims)
            self.ffn = FFN(embed_dims=embed_dims, feedforward_channels=feedforward_channels,
                           num_fcs=num_fcs, ffn_drop=drop_rate, dropout_layer=drop_path,
                           act_cfg=act_cfg, layer_scale_init_value=layer_scale_init_value)

    # ---- named accessors (mmpretrain's names and the MLP's parts) ----------------------------
    @property
    def norm1(self) -> Optional[nn.Module]:
        return self.ln1

    @property
    def norm2(self) -> Optional[nn.Module]:
        return self.ln2

    @property
    def fc1(self) -> nn.Linear:
        """The MLP's first linear layer, C -> F (key ``ffn.layers.0.0``)."""
        return self.ffn.layers[0][0]

    @property
    def act(self) -> nn.Module:
        """The MLP's activation (``ffn.layers.0.1``)."""
        return self.ffn.layers[0][1]

    @property
    def fc2(self) -> nn.Linear:
        """The MLP's last linear layer, F -> C (key ``ffn.layers.1``, with ``num_fcs=2``)."""
        return self.ffn.layers[-2]

    @property
    def gamma2(self) -> nn.Module:
        """The MLP branch's LayerScale (``ffn.gamma2``; an ``nn.Identity`` without one)."""
        return self.ffn.gamma2

    def init_weights(self) -> None:
        """mmpretrain's: xavier-uniform MLP weights, N(0, 1e-6) biases (empty ones skipped)."""
        super().init_weights()
        if self.ffn is None:
            return
        for m in self.ffn.modules():
            if isinstance(m, nn.Linear) and m.weight.numel() > 0:
                nn.init.xavier_uniform_(m.weight)
                nn.init.normal_(m.bias, std=1e-6)

    def forward(self, x: Tensor, policy: Optional[Tensor] = None,
                v_mask: Optional[Tensor] = None,
                neuron_mask: Optional[Tensor] = None) -> Tensor:
        """One block.

        Args:
            x: tokens (B, N, C).
            policy: (B, N) attention key weights or None (see :class:`~.attention.Attention`).
            v_mask: (H, d) head-output weights or None.
            neuron_mask: (F,) weights of the MLP hidden neurons or None: 0 at j equals
                removing row j of :attr:`fc1` and column j of :attr:`fc2` (UVC).

        Returns:
            (B, N, C).
        """
        if self.attn is not None:
            x = x + self.attn(self.ln1(x), policy, v_mask)
        if self.ffn is None:
            return x
        if neuron_mask is None:
            return self.ffn(self.ln2(x), identity=x)
        ffn = self.ffn
        h = ffn.layers[0](self.ln2(x)) * neuron_mask.to(x.dtype)  # fc1 -> act -> drop, masked
        out = ffn.gamma2(ffn.layers[2](self.fc2(h)))
        return x + ffn.dropout_layer(out)
