"""ONNX export (mmsparse.deploy, tools/deployment/pytorch2onnx.py): tiny models of every method
exported and run in ONNX Runtime against PyTorch (values and kept tokens / windows) on random
and real images, a dynamic batch at two sizes, and the bad-input errors of the tool."""
import runpy
import sys

import numpy as np
import pytest
import torch

from tests.conftest import REPO

from mmsparse.deploy import (RTOL, ExportError, export_model, kept_indices,
                             max_relative_error, onnx_ops, ort_session, run_session, same_kept,
                             verify_export)

VIT = REPO / 'configs/vit/vit-tiny-p4_fashion-mnist.py'
DYNAMICVIT = REPO / 'configs/dynamicvit/dynamicvit-vit-tiny-p4_fashion-mnist.py'
SVITE_PLUS = REPO / 'configs/svite/svite-plus-vit-tiny-p4_fashion-mnist.py'
UVC_STAGE1 = REPO / 'configs/uvc/uvc-vit-tiny-p4_stage1_fashion-mnist.py'
SPARSEVIT = REPO / 'configs/sparsevit/upernet_sparsevit-swin-t_cfg3_voc-sample.py'
TOOL = REPO / 'tools/deployment/pytorch2onnx.py'
# 3 blocks of width 32: a few ms per forward, every method's structure kept
TINY_ARCH = dict(embed_dims=32, num_layers=3, num_heads=2, feedforward_channels=64)
# two stages of 4x4 windows: 16 and 4 windows at 64x64 (the exporter's time grows with the blocks)
TINY_SWIN = dict(embed_dims=16, depths=[2, 2], num_heads=[1, 2], strides=(4, 2), out_indices=(0, 1),
                 window_size=4)


def _build(config, seed: int = 0, **options):
    """A config with ``options`` merged in and its model, random weights of ``seed``."""
    from mmsparse.utils import build_model, load_config
    cfg = load_config(str(config), options)
    torch.manual_seed(seed)
    model = build_model(cfg)
    with torch.no_grad():  # every weight random (LayerScale-free, so no degenerate zero tables)
        gen = torch.Generator().manual_seed(seed)
        for name, p in model.named_parameters():
            if p.dim() > 1 or 'relative_position' in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return cfg, model


def _vit_options(backbone: dict = None, **extra) -> dict:
    return {'model.backbone.arch': TINY_ARCH, 'model.head.in_channels': 32,
            **{f'model.backbone.{k}': v for k, v in (backbone or {}).items()}, **extra}


def _check(report, kept: bool):
    assert report.checks and [c.name for c in report.checks][-1] == 'real'
    assert report.max_rel_err <= RTOL, report.summary()
    assert report.kept_equal is (True if kept else None), report.summary()
    assert report.passed


def test_max_relative_error_is_normalised_per_output():
    a = [np.array([1.0, 2.0]), np.array([0.0, 100.5])]
    b = [np.array([1.0, 2.5]), np.array([0.0, 100.0])]
    # 0.5 / 2.5 in the first output, 0.5 / 100 in the second
    assert max_relative_error(a, b) == pytest.approx(0.2)
    assert max_relative_error([np.zeros(2)], [np.zeros(2)]) == 0.0
    # a NaN / inf on either side is never a match (numpy's max would skip the NaN)
    assert max_relative_error([np.array([1.0, np.nan])], [np.array([1.0, 2.0])]) == np.inf
    assert max_relative_error([np.array([1.0, 2.0])], [np.array([np.inf, 2.0])]) == np.inf
    with pytest.raises(ValueError, match='shape'):
        max_relative_error([np.zeros(2)], [np.zeros(3)])


def test_kept_indices_compare_as_sets_per_sample():
    expected = [np.array([[3, 1, 2], [0, 4, 5]])]
    assert same_kept([np.array([[1, 2, 3], [5, 0, 4]])], expected)  # another order
    assert not same_kept([np.array([[1, 2, 3], [5, 0, 6]])], expected)  # 6 instead of 4
    assert not same_kept([np.array([[0, 4, 5], [3, 1, 2]])], expected)  # samples swapped
    assert not same_kept([np.array([[1, 2], [0, 4]])], expected)
    assert not same_kept([], expected)


def test_dense_vit_at_both_attention_opsets(tmp_path, data_root):
    cfg, model = _build(VIT, **_vit_options())
    # default opset 23: each SDPA is one Attention node
    report = export_model(cfg, model, str(tmp_path / 'bb.onnx'), part='backbone',
                          shape=(28, 28), batch_size=2, verify=True)
    _check(report, kept=False)
    assert report.input_shape == (2, 1, 28, 28)
    assert report.ops.get('Attention') == 3 and 'Softmax' not in report.ops
    assert 'TopK' not in report.ops
    # opset 18: MatMul + Softmax + MatMul
    report = export_model(cfg, model, str(tmp_path / 'vit.onnx'), shape=(28, 28), opset=18,
                          verify=True)
    _check(report, kept=False)
    assert report.ops.get('Softmax') == 3 and 'Attention' not in report.ops
    assert [o.name for o in ort_session(report.file).get_outputs()] == ['logits']


def test_dynamicvit_keeps_the_same_tokens(tmp_path, data_root):
    cfg, model = _build(DYNAMICVIT, **_vit_options(dict(pruning_loc=[1, 2])))
    report = export_model(cfg, model, str(tmp_path / 'dv.onnx'), shape=(28, 28), batch_size=2,
                          verify=True)
    _check(report, kept=True)
    assert report.ops.get('TopK') == 2  # fixed keep counts: one TopK per stage
    assert report.checks[0].kept_sets == 2
    # the shipped graph has only the logits; the kept indices (34, 24 of 49) are what PyTorch keeps
    session = ort_session(report.file)
    assert [o.name for o in session.get_outputs()] == ['logits']
    # its kept tokens cannot be checked without the verification graph: refused, not skipped
    with pytest.raises(ExportError, match='verification graph'):
        verify_export(model, 'model', report.file, {'random': torch.randn(2, 1, 28, 28)})
    images = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        kept = kept_indices(model.backbone, images)
    assert [tuple(k.shape) for k in kept] == [(2, 34), (2, 24)]


def test_svite_plus_token_selector(tmp_path, data_root):
    cfg, model = _build(SVITE_PLUS, **_vit_options())
    report = export_model(cfg, model, str(tmp_path / 'sp.onnx'), shape=(28, 28), verify=True)
    _check(report, kept=True)
    assert report.ops.get('TopK') == 2  # the top-k, and the sort of the kept positions


@pytest.mark.parametrize('backbone', [
    # S²ViTE compaction: per-layer heads and MLP widths, a skipped layer, a head-less layer
    dict(type='mmsparse.CompactVisionTransformer', arch=TINY_ARCH, num_heads=[2, 0, 1],
         mlp_dims=[40, 8, 16], skip_layers=[1]),
    # UVC compaction: per-head value dims (two fused attention groups), a block without MLP
    dict(type='mmsparse.UVCCompactVisionTransformer', _delete_=True, embed_dims=32,
         head_dims=16, img_size=28, patch_size=4, in_channels=1,
         layers=[dict(v_dims=[16, 5], feedforward_channels=24),
                 dict(v_dims=[7], feedforward_channels=0)]),
])
def test_compact_vits(tmp_path, data_root, backbone):
    cfg, model = _build(VIT, **_vit_options(), **{'model.backbone': backbone})
    report = export_model(cfg, model, str(tmp_path / 'c.onnx'), shape=(28, 28), verify=True)
    _check(report, kept=False)


def test_sparse_checkpoint_exports_dense_weights(tmp_path, data_root):
    from mmsparse.compaction import export_sparse_checkpoint
    from mmsparse.utils import build_model
    cfg, model = _build(VIT, **_vit_options())
    with torch.no_grad():  # an unstructured-sparse model: half of every linear weight is zero
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.mul_((torch.rand(m.weight.shape) < 0.5).float())
    dense = tmp_path / 'dense.pth'
    torch.save(dict(state_dict=model.state_dict()), dense)
    export_sparse_checkpoint(str(dense), str(tmp_path / 'sparse.pth'))
    ckpt = f'sparse://{tmp_path / "sparse.pth"}'
    loaded = build_model(cfg, ckpt)
    report = export_model(cfg, loaded, str(tmp_path / 's.onnx'), shape=(28, 28), verify=True,
                          checkpoint=ckpt)
    _check(report, kept=False)
    assert 'dense tensors' in report.summary() and 'no speed-up' in report.summary()


def test_sparsevit_backbone_keeps_the_same_windows(tmp_path, data_root):
    # 48x48: stage 1 is 12x12 tokens (9 whole windows), stage 2 6x6, padded to 8x8 (4 windows,
    # pad tokens dropped in the scatter)
    ratios = [[0.5, 0.5], [0.25, 0.5]]
    cfg, model = _build(SPARSEVIT, **{f'model.backbone.{k}': v for k, v in TINY_SWIN.items()},
                        **{'model.backbone.window_ratios': ratios})
    report = export_model(cfg, model, str(tmp_path / 'sw.onnx'), part='backbone',
                          shape=(48, 48), verify=True)
    _check(report, kept=True)
    assert report.checks[0].kept_sets == 4  # four pruned blocks
    assert report.ops.get('ScatterND', 0) + report.ops.get('ScatterElements', 0) >= 4


def test_dynamic_batch_round_trip(tmp_path, data_root):
    cfg, model = _build(DYNAMICVIT, **_vit_options(dict(pruning_loc=[1, 2])))
    path = str(tmp_path / 'dyn.onnx')
    report = export_model(cfg, model, path, shape=(28, 28), dynamic_batch=True, verify=True)
    _check(report, kept=True)
    assert [c.shape[0] for c in report.checks] == [1, 2, 1]
    session = ort_session(path)
    assert isinstance(session.get_inputs()[0].shape[0], str)  # symbolic
    for b in (3, 5):
        images = torch.randn(b, 1, 28, 28)
        with torch.no_grad():
            expected = model(images, None, mode='tensor').numpy()
        (got, ) = run_session(session, images)
        assert got.shape == (b, 10)
        assert max_relative_error([got], [expected]) <= RTOL


# ---- the tool ----------------------------------------------------------------------------------
def _tool(argv, capsys, monkeypatch) -> tuple:
    """Run the tool in this process: (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, 'argv', [str(TOOL)] + [str(a) for a in argv])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(TOOL), run_name='__main__')
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


@pytest.fixture(scope='module')
def vit_ckpt(tmp_path_factory):
    _, model = _build(VIT, **_vit_options())
    path = tmp_path_factory.mktemp('ckpt') / 'vit.pth'
    torch.save(dict(state_dict=model.state_dict()), path)
    return path


def test_tool_exports_and_verifies(tmp_path, vit_ckpt, capsys, monkeypatch, data_root):
    out = tmp_path / 'vit.onnx'
    arch = [f'model.backbone.arch.{k}={v}' for k, v in TINY_ARCH.items()]
    code, stdout, _ = _tool([VIT, vit_ckpt, '--out', out, '--verify', '--cfg-options', *arch,
                             'model.head.in_channels=32'], capsys, monkeypatch)
    assert code == 0, stdout
    line = stdout.strip().splitlines()[-1]
    assert line.startswith(f'{out}: opset 23, input images (1, 1, 28, 28), part model')
    assert 'max rel err random' in line and 'real' in line and 'kept indices n/a' in line
    assert len(onnx_ops(str(out))) > 0


def test_tool_failed_verification_exits_1_with_an_error_line(tmp_path, vit_ckpt, capsys,
                                                             monkeypatch, data_root):
    import mmsparse.deploy.onnx as deploy_onnx
    run = deploy_onnx.run_session
    # ONNX Runtime's outputs off by 1: the check must fail, whatever the tool printed before
    monkeypatch.setattr(deploy_onnx, 'run_session',
                        lambda session, images: [o + 1.0 for o in run(session, images)])
    arch = [f'model.backbone.arch.{k}={v}' for k, v in TINY_ARCH.items()]
    code, _, stderr = _tool([VIT, vit_ckpt, '--out', tmp_path / 'vit.onnx', '--verify',
                             '--cfg-options', *arch, 'model.head.in_channels=32'],
                            capsys, monkeypatch)
    assert code == 1
    line = stderr.strip().splitlines()[-1]
    assert line.startswith('error: verification failed: random max rel err') and '> 0.0001' in line


@pytest.mark.parametrize('argv,needles', [
    (['--opset', '11'], ['--opset 11 is too old', 'LayerNormalization', '--opset 18']),
    (['--shape', '30', '30'], ['--shape 30 30', 'patch size 4x4']),
    (['--dynamic-batch', '--batch-size', '2'], None),  # argparse: mutually exclusive
])
def test_tool_bad_flags_are_one_error_line(argv, needles, vit_ckpt, capsys, monkeypatch,
                                           tmp_path):
    code, _, err = _tool([VIT, vit_ckpt, '--out', tmp_path / 'x.onnx', *argv], capsys,
                         monkeypatch)
    assert code == 2, err
    if needles:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith('error: '), err
        for n in needles:
            assert n in lines[0], lines[0]
    assert not (tmp_path / 'x.onnx').exists()


def test_tool_refuses_uvc_gated_model(vit_ckpt, capsys, monkeypatch, tmp_path):
    code, _, err = _tool([UVC_STAGE1, vit_ckpt, '--out', tmp_path / 'x.onnx'], capsys,
                         monkeypatch)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert 'UVCVisionTransformer' in lines[0] and 'tools/compact.py' in lines[0]
    assert '--method uvc' in lines[0]


def test_tool_verify_without_onnxruntime(vit_ckpt, capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)  # import onnxruntime -> ImportError
    code, _, err = _tool([VIT, vit_ckpt, '--verify', '--out', tmp_path / 'x.onnx'], capsys,
                         monkeypatch)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert 'ONNX Runtime' in lines[0] and "pip install 'mmsparse[deploy]'" in lines[0]
    assert not (tmp_path / 'x.onnx').exists()


def test_export_errors_name_the_problem():
    from mmsparse.deploy import check_exportable, check_opset
    cfg, model = _build(DYNAMICVIT, **_vit_options(dict(pruning_loc=[1, 2], selector='random')))
    with pytest.raises(ExportError, match="selector: 'random'"):
        check_exportable(model, 'model')
    with pytest.raises(ExportError, match='--opset 999 is newer than'):
        check_opset(999)
