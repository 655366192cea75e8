"""Stacked sparsity on DeiT-S: does structure x tokens multiply? UVC 0.5 + DynamicViT 0.7.

    python benchmarks/compose.py [--out benchmarks/results/compose] [--batch-sizes 1 32]
        [--warmup 3] [--runs 20]

One interleaved latency run (``mmsparse.analysis.profile_models``, 224x224, the classifier's
logits, untrained weights: speed only) of

- DeiT-S dense (the reference of every speed-up);
- UVC compact at budget 0.5 (the stored search of ``benchmarks/gpu/bench.py``);
- DynamicViT-DeiT-S rho 0.7 (137 / 96 / 67 patch tokens after blocks 3, 6, 9);
- the composition: ``DynamicViTClassifier(compact_checkpoint=<that UVC model>)``, built through
  the config path a user takes (a compact checkpoint with ``meta['compact_structure']``);
- the idealised reference: DeiT-S with an MLP of 640 instead of 1536 (``narrow``), plain top-k by
  token norm at the same keep counts (``tokens``: no predictor cost), and both at once.

``composed / product`` is the composition's speed-up divided by the product of its parts'
speed-ups (each against dense, same run): 1.0 is a perfect multiplication; smaller matmuls run
less efficiently on CPU, so the product is an upper bound. Writes OUT.json and OUT.md.
"""
import argparse
import os
import os.path as osp
import sys
import tempfile

import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

NARROW_MLP = 640


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default=osp.join(REPO, 'benchmarks/results/compose'))
    parser.add_argument('--batch-sizes', type=int, nargs='+', default=[1, 32])
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--runs', type=int, default=20)
    return parser.parse_args(argv)


def compact_file(model: torch.nn.Module, path: str) -> str:
    """Save ``model`` as a compaction does (weights + ``meta['compact_structure']``)."""
    from mmsparse.models.layers.compact_vit import compact_structure
    torch.save(dict(meta=dict(compact_structure=compact_structure(model.backbone)),
                    state_dict=model.state_dict()), path)
    return path


def build_models(tmp: str) -> tuple:
    """(models in order, the name pairs whose product each composition is compared with)."""
    from benchmarks import dynamicvit
    from benchmarks.gpu.bench import uvc_compact
    from mmsparse.utils import build_model
    torch.manual_seed(0)
    base = dynamicvit.deit_models('cpu')
    dense_name, dyn_name, norm_name = list(base)
    uvc, _ = uvc_compact(None, 'cpu', tmp)
    ckpt = compact_file(uvc, osp.join(tmp, 'uvc_compact.pth'))
    dyn_text = (f"_base_ = ['{dynamicvit.DV_DEIT_S}']\nload_from = None\n"
                "model = dict(distill=False, compact_checkpoint='{ckpt}', "
                "backbone=dict(type='{type}', selector='{selector}'{extra}))\n")
    composed = build_model(dynamicvit._cfg(dyn_text.format(
        ckpt=ckpt, type='mmsparse.DynamicVisionTransformer', selector='predictor', extra='')))
    composed.init_weights()  # the compact weights (speed only, but the path a user takes)
    narrow_text = ("_base_ = ['mmpretrain::deit/deit-small_4xb256_in1k.py']\n"
                   "default_scope = 'mmsparse'\n"
                   "model = dict(backbone=dict(type='mmsparse.CompactVisionTransformer', "
                   f"mlp_dims={NARROW_MLP}, init_cfg=None))\n")
    narrow = build_model(dynamicvit._cfg(narrow_text))
    norm_type = dynamicvit._register_norm_topk()
    both = build_model(dynamicvit._cfg(dyn_text.replace("compact_checkpoint='{ckpt}', ", '')
                                       .format(type=norm_type, selector='random',
                                               extra=f', mlp_dims={NARROW_MLP}')))
    names = dict(uvc='UVC compact, budget 0.5', composed='UVC 0.5 + DynamicViT 0.7',
                 narrow=f'idealised: MLP {NARROW_MLP} (narrow)',
                 tokens='idealised: top-k by norm (tokens)',
                 both='idealised: narrow + tokens')
    models = {dense_name: base[dense_name], names['uvc']: uvc, dyn_name: base[dyn_name],
              names['composed']: composed, names['narrow']: narrow, names['tokens']: base[norm_name],
              names['both']: both}
    products = {names['composed']: (names['uvc'], dyn_name),
                names['both']: (names['narrow'], names['tokens'])}
    return models, products


def main() -> int:
    args = parse_args()
    from mmsparse.analysis.report import markdown_table, profile_models, write_report
    with tempfile.TemporaryDirectory() as tmp:
        models, products = build_models(tmp)
        rows = profile_models(models, (224, 224), 3, batch_sizes=args.batch_sizes,
                              warmup=args.warmup, runs=args.runs)
    by_name = {r['name']: r for r in rows}
    for name, (a, b) in products.items():
        r = by_name[name]
        r['product_of_parts'] = {bs: by_name[a]['speedup'][bs] * by_name[b]['speedup'][bs]
                                 for bs in args.batch_sizes}
        r['of_product'] = {bs: r['speedup'][bs] / r['product_of_parts'][bs]
                           for bs in args.batch_sizes}
    table = markdown_table(rows)
    lines = ['', '', '| composition | parts | ' + ' | '.join(
        f'product bs{bs} | composed / product bs{bs}' for bs in args.batch_sizes) + ' |',
        '|' + '---|' * (2 + 2 * len(args.batch_sizes))]
    for name, (a, b) in products.items():
        r = by_name[name]
        lines.append(f'| {name} | {a} x {b} | ' + ' | '.join(
            f"{r['product_of_parts'][bs]:.2f}x | {r['of_product'][bs]:.2f}"
            for bs in args.batch_sizes) + ' |')
    table += '\n'.join(lines)
    os.makedirs(osp.dirname(args.out), exist_ok=True)
    write_report(rows, args.out, table, meta=dict(
        img_size=[224, 224], warmup=args.warmup, runs=args.runs, weights='untrained (speed only)',
        command='python benchmarks/compose.py ' + ' '.join(sys.argv[1:])))
    print(table)
    print(f'\n(written to {args.out}.json / .md)')
    return 0


if __name__ == '__main__':
    from mmsparse.utils import run_cli
    run_cli(main)
