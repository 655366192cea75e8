"""Dense reference models side by side: FLOPs, params and latency (CPU, or GPU where present).

The models every method is compared against: DeiT-T/S/B (mmpretrain), Swin-T (mmpretrain, 224),
and the Swin-T backbone of Mask R-CNN at 672x672 batch 4 (SparseViT's setting). Latencies of one
group are measured interleaved in one run; speed-ups are against the group's first model.

    python benchmarks/dense_baselines.py [--runs 30] [--out benchmarks/results/dense_baselines]
"""
import argparse
import os
import sys
import tempfile

from mmsparse.analysis.report import markdown_table, profile_models, write_report
from mmsparse.utils import build_model, load_config

GROUPS = {
    'classification 224x224': dict(
        configs={'DeiT-T': 'mmpretrain::deit/deit-tiny_4xb256_in1k.py',
                 'DeiT-S': 'mmpretrain::deit/deit-small_4xb256_in1k.py',
                 'DeiT-B': 'mmpretrain::deit/deit-base_16xb64_in1k.py',
                 'Swin-T': 'mmpretrain::swin_transformer/swin-tiny_16xb64_in1k.py'},
        part='model', img_size=(224, 224), batch_sizes=(1, 32)),
    'detection backbone 672x672': dict(
        configs={'Swin-T (Mask R-CNN)': 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'},
        part='backbone', img_size=(672, 672), batch_sizes=(4, )),
}


def zoo_model(zoo: str, device: str):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'cfg.py')
        with open(path, 'w') as f:
            f.write(f"_base_ = ['{zoo}']\ndefault_scope = 'mmsparse'\n"
                    "model = dict(backbone=dict(init_cfg=None))\n")
        return build_model(load_config(path), device=device)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--runs', type=int, default=30)
    parser.add_argument('--warmup', type=int, default=5)
    parser.add_argument('--out', default='benchmarks/results/dense_baselines')
    parser.add_argument('--device', default=None)
    args = parser.parse_args(argv)
    import torch
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    os.makedirs(os.path.dirname(args.out) or '.', exist_ok=True)
    tables, all_rows = [], []
    for title, group in GROUPS.items():
        models = {name: zoo_model(zoo, device) for name, zoo in group['configs'].items()}
        rows = profile_models(models, group['img_size'], part=group['part'],
                              batch_sizes=group['batch_sizes'], warmup=args.warmup,
                              runs=args.runs, device=device)
        for row in rows:
            row['group'] = title
        all_rows += rows
        tables.append(f'### {title} ({group["part"]}, {device})\n\n' + markdown_table(rows))
    table = '\n\n'.join(tables)
    write_report(all_rows, args.out, table)
    print(table)
    return 0


if __name__ == '__main__':
    sys.exit(main())
