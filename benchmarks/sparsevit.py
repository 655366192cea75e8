"""SparseViT vs dense Swin-T, side by side: FLOPs, params, measured latency, speed-up.

1. Backbone at 672x672, batch 4 (SparseViT's latency setting): mmdet's dense ``SwinTransformer``
   (from the Mask R-CNN Swin-T config) against mmsparse's ``SparseSwinTransformer`` with all
   ratios 0 and with the paper's cfg1 / cfg2 / cfg3 window ratios, all holding the same weights
   (the sparse Mask R-CNNs load the dense one's state_dict, strictly). Latencies of all models are
   measured interleaved in one run; speed-ups are against the dense model of that run.
2. The whole Mask R-CNN (``predict``: backbone, FPN, RPN, RoI heads incl. masks) at the same
   setting, dense vs cfg3. The weights are random, so ``score_thr`` is set to 0: every image
   sends its 100 top detections through the mask head, as a trained model does on a busy image.
3. Per-stage time of the backbone (dense vs cfg3), to show where the time goes.

    python benchmarks/sparsevit.py [--runs 8] [--warmup 2] [--model-runs 4]
        [--out benchmarks/results/sparsevit]
"""
import argparse
import os
import sys
import tempfile
import time

from mmsparse.analysis.report import markdown_table, profile_models, write_report
from mmsparse.utils import build_model, load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPARSE_CFGS = {f'SparseViT {c}': f'{REPO}/configs/sparsevit/mask-rcnn_sparsevit-swin-t_{c}_coco.py'
               for c in ('cfg1', 'cfg2', 'cfg3')}
DENSE_ZOO = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_ms-crop-3x_coco.py'


def _build(cfg_text: str, device: str):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'cfg.py')
        with open(path, 'w') as f:
            f.write(cfg_text)
        return build_model(load_config(path), device=device)


def build_models(device: str) -> dict:
    """Dense mmdet Mask R-CNN Swin-T and its SparseViT copies, all with the same weights."""
    import torch
    common = ("model = dict(backbone=dict(init_cfg=None), "
              "test_cfg=dict(rcnn=dict(score_thr=0.0)))\n")
    dense = _build(f"_base_ = ['{DENSE_ZOO}']\ndefault_scope = 'mmsparse'\n" + common, device)
    torch.manual_seed(0)
    dense.init_weights()
    with torch.no_grad():  # mmdet leaves the relative position tables at 0; give them values
        for name, p in dense.backbone.named_parameters():
            if 'relative_position_bias_table' in name:
                p.normal_(0, 0.02)
    models = {'Swin-T dense (mmdet)': dense}
    names = {'SparseViT ratios 0': f'{REPO}/configs/sparsevit/mask-rcnn_sparsevit-swin-t_coco.py'}
    names.update(SPARSE_CFGS)
    for name, path in names.items():
        model = _build(f"_base_ = ['{path}']\n" + common, device)
        model.load_state_dict(dense.state_dict(), strict=True)
        models[name] = model.eval()
    return models


DENSE_CFG = f'{REPO}/configs/sparsevit/mask-rcnn_sparsevit-swin-t_coco.py'  # all ratios 0


def build_backbones(device: str, mmdet_reference: bool = True) -> dict:
    """The Swin-T backbones of the SparseViT Mask R-CNN configs, all holding the same weights.

    ``'Swin-T dense'`` is the backbone of ``mask-rcnn_sparsevit-swin-t_coco.py`` (every window
    ratio 0: the dense Swin's computation); then cfg1 / cfg2 / cfg3. Only the backbones are built,
    so neither mmdet's models nor mmcv's compiled ops are imported (the configs still inherit
    from mmdet's, so mmdet must be installed). With ``mmdet_reference``, mmdet's own
    ``SwinTransformer`` is added as ``'Swin-T dense (mmdet)'`` where its models import (mmcv with
    compiled ops), as a check of the reference.
    """
    import torch
    from mmengine.registry import MODELS

    from mmsparse.utils.cli import setup_scope

    def backbone(path: str):
        cfg = load_config(path)
        setup_scope(cfg)
        return MODELS.build(cfg.model.backbone)

    torch.manual_seed(0)
    dense = backbone(DENSE_CFG)
    dense.init_weights()
    with torch.no_grad():  # the relative position tables start at 0; give them values
        for name, p in dense.named_parameters():
            if 'relative_position_bias_table' in name:
                p.normal_(0, 0.02)
    models = {'Swin-T dense': dense}
    for name, path in SPARSE_CFGS.items():
        models[name] = backbone(path)
    if mmdet_reference:
        try:
            import mmdet.models  # noqa: F401  (needs mmcv's compiled ops)
        except ImportError:
            pass
        else:
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, 'cfg.py')
                with open(path, 'w') as f:
                    f.write(f"_base_ = ['{DENSE_ZOO}']\n")
                cfg = load_config(path)
            models['Swin-T dense (mmdet)'] = MODELS.build(dict(cfg.model.backbone,
                                                               _scope_='mmdet'))
    for model in models.values():
        if model is not dense:
            model.load_state_dict(dense.state_dict(), strict=True)
    for model in models.values():
        model.to(device).eval()  # (mmdet's SwinTransformer.train returns None: no chaining)
    return models


def stage_times(backbone, images, runs: int) -> list:
    """Median ms of patch embedding, each stage (blocks + downsample) and the output norms."""
    import torch
    times = {}
    with torch.no_grad():
        for r in range(runs + 1):
            t0 = time.perf_counter()
            x, hw = backbone.patch_embed(images)
            parts = [('patch_embed', time.perf_counter() - t0)]
            for i, stage in enumerate(backbone.stages):
                t0 = time.perf_counter()
                x, hw, out, out_hw = stage(x, hw)
                parts.append((f'stage {i}', time.perf_counter() - t0))
                t0 = time.perf_counter()
                getattr(backbone, f'norm{i}')(out)
                parts.append((f'norm{i}', time.perf_counter() - t0))
            if r:  # first run: warm-up
                for k, v in parts:
                    times.setdefault(k, []).append(v * 1e3)
    return [(k, sorted(v)[len(v) // 2]) for k, v in times.items()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--runs', type=int, default=8, help='timed backbone runs per model')
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--model-runs', type=int, default=4,
                        help='timed whole-Mask R-CNN runs per model (0: skip)')
    parser.add_argument('--stage-runs', type=int, default=2,
                        help='timed runs of the per-stage breakdown (0: skip)')
    parser.add_argument('--img-size', type=int, default=672)
    parser.add_argument('--batch-size', type=int, default=4)
    parser.add_argument('--out', default='benchmarks/results/sparsevit')
    parser.add_argument('--device', default=None)
    args = parser.parse_args(argv)
    import torch

    from mmsparse.analysis import make_images, thread_info
    from mmsparse.ops.windows import num_kept_windows
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    os.makedirs(os.path.dirname(args.out) or '.', exist_ok=True)
    size = (args.img_size, args.img_size)
    bs = args.batch_size
    models = build_models(device)
    info = thread_info()
    head = (f'{device}, {info["torch_threads"]} threads, input {bs}x3x{size[0]}x{size[1]}, '
            f'same weights in every model, latencies measured interleaved in one run')
    sections, all_rows = [], []

    t0 = time.time()
    rows = profile_models(models, size, part='backbone', batch_sizes=(bs, ),
                          warmup=args.warmup, runs=args.runs, device=device)
    for row in rows:
        row['group'] = 'backbone'
        row['window_ratios'] = [list(r) for r in getattr(models[row['name']].backbone,
                                                         'window_ratios', [])]
    all_rows += rows
    dense_gflops = rows[0]['gflops']
    for row in rows:
        row['flops_vs_dense'] = row['gflops'] / dense_gflops
    sections.append(f'### Backbone ({head}; {args.runs} runs after {args.warmup} warm-up, '
                    f'{time.time() - t0:.0f} s)\n\n' + markdown_table(
                        rows, extra=[('flops_vs_dense', 'FLOPs vs dense', '.3f')]))

    # kept windows at this size
    lines = ['| model | kept windows per block (stage: block counts / windows) |', '|---|---|']
    hw = [-(-args.img_size // (4 * 2**i)) for i in range(4)]
    for name, model in models.items():
        ratios = getattr(model.backbone, 'window_ratios', None)
        if ratios is None:
            continue
        cells = []
        for i, stage in enumerate(ratios):
            nw = (-(-hw[i] // 7))**2
            kept = [num_kept_windows(nw, r) if r > 0 else nw for r in stage]
            cells.append(f"s{i}: {' '.join(map(str, kept))} / {nw}")
        lines.append(f'| {name} | {"; ".join(cells)} |')
    sections.append('### Windows processed per block\n\n' + '\n'.join(lines))

    if args.stage_runs:
        images = make_images(bs, size, device=device)
        dense_t = stage_times(models['Swin-T dense (mmdet)'].backbone, images, args.stage_runs)
        cfg3_t = stage_times(models['SparseViT cfg3'].backbone, images, args.stage_runs)
        lines = ['| part | dense (ms) | cfg3 (ms) | ratio |', '|---|---|---|---|']
        for (k, a), (_, b) in zip(dense_t, cfg3_t):
            lines.append(f'| {k} | {a:.1f} | {b:.1f} | {a / b:.2f}x |')
        total_a, total_b = sum(a for _, a in dense_t), sum(b for _, b in cfg3_t)
        lines.append(f'| total | {total_a:.1f} | {total_b:.1f} | {total_a / total_b:.2f}x |')
        sections.append(f'### Backbone time per stage, dense vs cfg3 (median of '
                        f'{args.stage_runs} sequential runs, not interleaved)\n\n'
                        + '\n'.join(lines))
        all_rows.append(dict(group='stages', dense_ms=dict(dense_t), cfg3_ms=dict(cfg3_t)))

    if args.model_runs:
        t0 = time.time()
        pair = {k: models[k] for k in ('Swin-T dense (mmdet)', 'SparseViT cfg3')}
        rows = profile_models(pair, size, part='model', batch_sizes=(bs, ), warmup=1,
                              runs=args.model_runs, device=device)
        for row in rows:
            row['group'] = 'Mask R-CNN'
        all_rows += rows
        sections.append(f'### Whole Mask R-CNN, predict ({head}; {args.model_runs} runs after 1 '
                        f'warm-up, score_thr 0 so the mask head sees 100 detections per image, '
                        f'{time.time() - t0:.0f} s)\n\n' + markdown_table(rows))

    table = '\n\n'.join(sections)
    write_report(all_rows, args.out, table, meta=dict(img_size=list(size), batch_size=bs,
                                                       runs=args.runs, warmup=args.warmup))
    print(table)
    return 0


if __name__ == '__main__':
    sys.exit(main())
