"""`make demo`: train and evaluate on real Fashion-MNIST on CPU, then one table side by side.

Each row is a config trained here (from scratch, or fine-tuned from an earlier row's checkpoint),
evaluated on the 10k test images, then profiled: top-1, GFLOPs, parameters and latency at batch 1
and 32, measured interleaved in one run (speed-ups are against the first row).
"""
import argparse
import os
import os.path as osp

from mmsparse.utils import load_config, run_cli
from mmsparse.utils.cli import build_runner

# name, config, and the earlier row whose trained checkpoint this row starts from.
ROWS = [
    dict(name='ViT dense', config='configs/vit/vit-tiny-p4_fashion-mnist.py', init_from=None),
    dict(name='DynamicViT ρ=0.7',
         config='configs/dynamicvit/dynamicvit-vit-tiny-p4_fashion-mnist.py',
         init_from='ViT dense'),
    # SViTE+: weights at density 0.5 (DST) + 70 % of the tokens; fine-tuned 200 iterations from
    # the dense row (the demo's time budget has no room for a from-scratch epoch)
    dict(name='SViTE+ density 0.5, 70% tokens',
         config='configs/svite/'
                'svite-plus-vit-tiny-p4_density0.5-tokens0.7_ft-from-dense_fashion-mnist.py',
         init_from='ViT dense'),
    # UVC at budget 0.5: a short stage-1 search (100 steps) from the dense row, then a short
    # stage-2 fine-tune (150 steps) from the stage-1 row; the stage-2 row is tested and profiled
    # as the compacted, physically smaller model (UVCCompactHook swap_model). The stage-1 row
    # is the masked model (dense compute) right after the search, before any fine-tuning.
    dict(name='UVC stage 1 (search, masked)',
         config='configs/uvc/uvc-vit-tiny-p4_stage1_fashion-mnist-demo.py',
         init_from='ViT dense'),
    dict(name='UVC budget 0.5 (compact)',
         config='configs/uvc/uvc-vit-tiny-p4_stage2_fashion-mnist-demo.py',
         init_from='UVC stage 1 (search, masked)'),
    # stacked sparsity: DynamicViT's predictors trained on the UVC row's compact model (its
    # uvc_compact.pth as model.compact_checkpoint), distilling from that compact model
    dict(name='UVC 0.5 + DynamicViT ρ=0.7',
         config='configs/compose/dynamicvit-uvc-vit-tiny-p4_budget0.5_fashion-mnist.py',
         init_from=None, compact_from='UVC budget 0.5 (compact)'),
]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--rows', nargs='+', default=None,
                        help=f'names of the rows to run (default all: {[r["name"] for r in ROWS]})')
    parser.add_argument('--reuse', action='store_true',
                        help="reuse a row's checkpoint from an earlier demo run instead of training")
    parser.add_argument('--batch-sizes', type=int, nargs='+', default=[1, 32])
    parser.add_argument('--runs', type=int, default=50)
    return parser.parse_args(argv)


def row_work_dir(row: dict, work_dir: str) -> str:
    return osp.join(work_dir, osp.splitext(osp.basename(row['config']))[0])


def train_and_test(row: dict, work_dir: str, init_ckpt: str, reuse: bool):
    """Train ``row``'s config (unless reused), test it; returns (model, top-1, checkpoint)."""
    cfg = load_config(row['config'])
    cfg.work_dir = row_work_dir(row, work_dir)
    if row.get('compact_from'):  # the compact model UVCCompactHook wrote in that row's work dir
        source = next(r for r in ROWS if r['name'] == row['compact_from'])
        cfg.model.compact_checkpoint = osp.join(row_work_dir(source, work_dir), 'uvc_compact.pth')
    ckpt = osp.join(cfg.work_dir, f"epoch_{cfg.train_cfg['max_epochs']}.pth")
    compact = osp.join(cfg.work_dir, 'uvc_compact')
    swaps = any(h.get('type', '').endswith('UVCCompactHook') and h.get('swap_model')
                for h in cfg.get('custom_hooks') or [])
    if reuse and swaps and osp.isfile(f'{compact}.pth'):
        # the row is its compact model (UVCCompactHook swapped it in after training)
        test_cfg = load_config(f'{compact}.py')
        test_cfg.work_dir, test_cfg.load_from = cfg.work_dir, f'{compact}.pth'
        runner = build_runner(test_cfg, 'none')
    elif reuse and osp.isfile(ckpt):
        cfg.load_from = ckpt
        runner = build_runner(cfg, 'none')
    else:
        cfg.load_from = init_ckpt
        runner = build_runner(cfg, 'none')
        runner.train()
    metrics = runner.test()
    return runner.model, metrics['accuracy/top1'], ckpt, cfg


def main() -> int:
    args = parse_args()
    from mmsparse.analysis.report import markdown_table, profile_models, write_report
    from mmsparse.utils.cli import UserError, positive_ints
    positive_ints(args.batch_sizes, '--batch-sizes')
    rows = ROWS if args.rows is None else [r for r in ROWS if r['name'] in args.rows]
    names = [r['name'] for r in rows]
    for row in rows:  # a row starts from an earlier row: both run, in this order
        for need in (row['init_from'], row.get('compact_from')):
            if need and need not in names:
                raise UserError(f'--rows: {row["name"]!r} starts from {need!r}: give both')
    if not rows:
        raise UserError(f'--rows: none of {args.rows} is a demo row; rows: '
                        f'{[r["name"] for r in ROWS]}')
    os.makedirs(args.work_dir, exist_ok=True)
    models, top1, ckpts = {}, {}, {}
    size = channels = None
    for row in rows:
        init = ckpts.get(row['init_from']) if row['init_from'] else None
        model, acc, ckpts[row['name']], cfg = train_and_test(row, args.work_dir, init, args.reuse)
        models[row['name']], top1[row['name']] = model, acc
        bb = cfg.model.backbone
        size, channels = (bb.img_size, bb.img_size), bb.get('in_channels', 3)
    profile = profile_models(models, size, channels, batch_sizes=args.batch_sizes,
                             runs=args.runs)
    for row in profile:
        row['top1'] = top1[row['name']]
    table = markdown_table(profile, extra=[('top1', 'top-1 (%)', '.2f')])
    write_report(profile, osp.join(args.work_dir, 'results'), table,
                 meta=dict(data='Fashion-MNIST test (10k)', img_size=list(size)))
    print('\n' + table)
    print(f'\n(written to {osp.join(args.work_dir, "results")}.md/.json)')
    return 0


if __name__ == '__main__':
    run_cli(main)
