"""FLOPs (MACs) against hand-computed counts."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmsparse.analysis import count_flops, make_images, part_module
from mmsparse.utils import build_model, load_config


class _Attention(nn.Module):

    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


def test_sdpa_counts_both_matmuls():
    b, h, nq, nk, d, dv = 2, 3, 5, 7, 8, 4
    q, k, v = torch.randn(b, h, nq, d), torch.randn(b, h, nk, d), torch.randn(b, h, nk, dv)
    res = count_flops(_Attention(), (q, k, v))
    assert res.flops == b * h * nq * nk * d + b * h * nq * nk * dv
    assert not res.unsupported_ops.get('aten::scaled_dot_product_attention')


class _KeepTokens(nn.Module):
    """Keeps the first ``keep`` tokens, then a linear layer: FLOPs must follow ``keep``."""

    def __init__(self, keep: int) -> None:
        super().__init__()
        self.keep = keep
        self.fc = nn.Linear(16, 32)

    def forward(self, x):
        idx = torch.arange(self.keep).expand(x.shape[0], -1)
        x = torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[-1]))
        return self.fc(x)


def test_count_follows_tokens_really_processed():
    x = torch.randn(2, 50, 16)
    assert count_flops(_KeepTokens(10), (x, )).flops == 2 * 10 * 16 * 32
    assert count_flops(_KeepTokens(25), (x, )).flops == 2 * 25 * 16 * 32


def test_count_leaves_every_module_in_its_mode():
    # a model in eval mode counted through a fresh wrapper (part_module) stays in eval mode, and
    # a model with mixed modes keeps each module's own
    model = nn.Sequential(nn.Linear(16, 16), nn.Dropout(0.5), nn.Linear(16, 4)).eval()
    wrapper = nn.Sequential(model)
    wrapper.training = True
    count_flops(wrapper, (torch.randn(2, 16), ))
    assert not any(m.training for m in model.modules()) and wrapper.training
    model[1].train()
    count_flops(model, (torch.randn(2, 16), ))
    assert [m.training for m in model] == [False, True, False] and not model.training


def _zoo_model(tmp_path, zoo: str):
    cfg_file = tmp_path / 'cfg.py'
    cfg_file.write_text(f"_base_ = ['{zoo}']\ndefault_scope = 'mmsparse'\n"
                        "model = dict(backbone=dict(init_cfg=None))\n")
    return build_model(load_config(str(cfg_file)))


def _vit_macs(tokens: int, dim: int, depth: int, mlp: int, patches: int, patch_in: int,
              classes: int) -> int:
    """Hand count of a ViT: patch conv, per block qkv/proj/fc1/fc2 + QK^T and AV, head."""
    block = tokens * dim * 3 * dim + tokens * dim * dim + 2 * tokens * dim * mlp
    block += 2 * tokens * tokens * dim
    return patches * dim * patch_in + depth * block + dim * classes


def test_deit_small_224(tmp_path):
    model = _zoo_model(tmp_path, 'mmpretrain::deit/deit-small_4xb256_in1k.py')
    images = make_images(1, (224, 224))
    res = count_flops(part_module(model, 'model', images), (images, ))
    hand = _vit_macs(197, 384, 12, 1536, 196, 3 * 16 * 16, 1000)
    assert hand == pytest.approx(4.5989e9, rel=1e-4)
    ops = res.by_operator
    assert ops['scaled_dot_product_attention'] == 12 * 2 * 197 * 197 * 384
    # everything but the 25 LayerNorms (which mmengine counts as 5 per element) is exact
    assert res.flops - ops['layer_norm'] == hand
    assert ops['layer_norm'] == 25 * 197 * 384 * 5
    assert res.gflops == pytest.approx(4.6, rel=0.02)
    assert res.params == pytest.approx(22.05e6, rel=0.01)


def test_swin_tiny_224(tmp_path):
    model = _zoo_model(tmp_path, 'mmpretrain::swin_transformer/swin-tiny_16xb64_in1k.py')
    images = make_images(1, (224, 224))
    res = count_flops(part_module(model, 'model', images), (images, ))
    assert res.gflops == pytest.approx(4.5, rel=0.02)
    assert res.params == pytest.approx(28.29e6, rel=0.01)
