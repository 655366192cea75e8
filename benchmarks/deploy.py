"""PyTorch eager against ONNX Runtime, for every method: is the speed-up measured in PyTorch the
one that ships?

    python benchmarks/deploy.py [--out benchmarks/results/deploy] [--threads 2]
        [--groups vit swin] [--vit-batch-sizes 1 32] [--swin-batch-sizes 4] [--swin-size 672]
        [--warmup 2] [--runs 10] [--quick]

Each model is exported by :func:`mmsparse.deploy.export_part` (the part FLOPs and latency
measure; static shapes, one graph per batch size), checked in ONNX Runtime against PyTorch on
the same random images (largest relative error; kept token / window indices compared exactly),
then timed: PyTorch eager and ONNX Runtime (CPU execution provider, ``--threads`` intra-op
threads, the same as ``torch.set_num_threads``) of every model of a group, one call of each in
turn, in one run. Speed-ups are against the group's dense model *in the same runtime* of that
run; ``ORT/PT`` is the ONNX Runtime speed-up as a fraction of the PyTorch one.

Groups (weights untrained: speed only; keep counts, window counts and compact sizes are fixed by
the configs, as in ``benchmarks/gpu/bench.py``, whose models these are):

- ``vit``: DeiT-S 224x224, the classifier's logits: dense; DynamicViT rho 0.7; SViTE+ tokens
  0.7; UVC compact at budget 0.5; S²ViTE compact; and SViTE's unstructured sparsity (40 %
  density, smallest-magnitude weights of the blocks' linears zeroed): ONNX stores those zeros
  as dense tensors, so no speed-up is expected or claimed there.
- ``swin``: the Swin-T backbone at 672x672 (SparseViT's latency setting): dense (all window
  ratios 0) against SparseViT cfg1 / cfg2 / cfg3.

Writes OUT.json and OUT.md.
"""
import argparse
import json
import os
import os.path as osp
import sys
import tempfile
import time

import torch

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

SVITE_DENSITY = 0.4


def say(msg: str) -> None:
    print(f'[deploy {time.strftime("%H:%M:%S")}] {msg}', flush=True)


def vit_models() -> dict:
    """name -> (model, family): the DeiT-S models of the GPU kit's ``vit`` group that have an
    inference graph (not its plain top-k reference, whose selection is built as 'random'), and
    the SViTE row."""
    import copy

    from benchmarks.gpu.bench import vit_models as kit_models
    from mmsparse.ops.dst import magnitude_mask

    models, families, _ = kit_models(dict(uvc_steps=0, out=None), 'cpu')
    out = {name: (model, families[name]) for name, model in models.items()
           if families[name] != 'norm-topk'}
    dense_name = next(iter(out))
    sparse = copy.deepcopy(out[dense_name][0])
    with torch.no_grad():
        for name, module in sparse.backbone.layers.named_modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.mul_(magnitude_mask(module.weight, SVITE_DENSITY))
    out[f'SViTE DeiT-S density {SVITE_DENSITY} (zeros stored dense)'] = (sparse.eval(), 'svite')
    return out


class _Hosted(torch.nn.Module):
    """A backbone built alone, held as ``.backbone`` (the part :func:`export_part` exports)."""

    def __init__(self, backbone) -> None:
        super().__init__()
        self.backbone = backbone


def swin_models() -> dict:
    from benchmarks import sparsevit
    models = sparsevit.build_backbones('cpu', mmdet_reference=False)
    return {name: (_Hosted(m).eval(), 'swin-dense' if name.startswith('Swin-T dense')
                   else 'sparsevit') for name, m in models.items()}


def run_group(group: str, models: dict, part: str, img_size: tuple, batch_sizes, threads: int,
              warmup: int, runs: int, work: str) -> list:
    """Export, verify and time every model of a group; one row per (model, batch size)."""
    from mmsparse.analysis import count_flops, make_images, measure_latency, part_module
    from mmsparse.deploy import (export_part, ort_session, run_session, verify_export)

    one = make_images(1, img_size)
    flops = {name: count_flops(part_module(m, part, one), (one, )).gflops
             for name, (m, _) in models.items()}
    ref = next(iter(models))
    rows = []
    for bs in batch_sizes:
        images = make_images(bs, img_size, seed=bs)
        fns, checks, export_s = {}, {}, {}
        for i, (name, (model, _)) in enumerate(models.items()):
            path = osp.join(work, f'{group}_{i}_bs{bs}.onnx')
            probe = osp.join(work, f'{group}_{i}_bs{bs}_verification.onnx')
            t0 = time.time()
            export_part(model, part, images, path, verification_path=probe)
            export_s[name] = time.time() - t0
            checks[name] = verify_export(model, part, path, {'random': images}, threads,
                                         probe if osp.exists(probe) else None)[0]
            module = part_module(model, part, images)
            session = ort_session(path, threads)
            fns[f'{name} | pytorch'] = lambda m=module: m(images)
            fns[f'{name} | onnxruntime'] = lambda s=session: run_session(s, images)
            say(f'{group} bs{bs}: {name}: exported in {export_s[name]:.0f} s, max rel err '
                f'{checks[name].max_rel_err:.1e}, kept equal {checks[name].kept_equal}')
        t0 = time.time()
        lat = measure_latency(fns, warmup=warmup, runs=runs)
        say(f'{group} bs{bs}: {len(fns)} timed interleaved, {runs} runs ({time.time() - t0:.0f} s)')
        pt_ref = lat[f'{ref} | pytorch'].trimmed_mean_ms
        ort_ref = lat[f'{ref} | onnxruntime'].trimmed_mean_ms
        for name, (_, family) in models.items():
            pt = lat[f'{name} | pytorch'].trimmed_mean_ms
            ort = lat[f'{name} | onnxruntime'].trimmed_mean_ms
            pt_up, ort_up = pt_ref / pt, ort_ref / ort
            rows.append(dict(
                group=group, name=name, family=family, batch=bs, gflops=flops[name],
                pytorch_ms=pt, onnxruntime_ms=ort, pytorch_speedup=pt_up,
                onnxruntime_speedup=ort_up, ort_over_pt_speedup=ort_up / pt_up,
                ort_vs_pytorch=pt / ort, max_rel_err=checks[name].max_rel_err,
                kept_equal=checks[name].kept_equal, export_s=export_s[name],
                pytorch_std_ms=lat[f'{name} | pytorch'].std_ms,
                onnxruntime_std_ms=lat[f'{name} | onnxruntime'].std_ms))
        del fns
    return rows


def markdown(rows: list) -> str:
    head = ('| group | model | batch | GFLOPs | PyTorch (ms) | ORT (ms) | PyTorch speed-up | '
            'ORT speed-up | ORT/PT | ORT vs PyTorch | max rel err | kept equal |')
    lines = [head, '|' + '---|' * (head.count('|') - 1)]
    for r in rows:
        kept = '-' if r['kept_equal'] is None else ('yes' if r['kept_equal'] else 'NO')
        lines.append(
            f"| {r['group']} | {r['name']} | {r['batch']} | {r['gflops']:.2f} | "
            f"{r['pytorch_ms']:.1f} | {r['onnxruntime_ms']:.1f} | {r['pytorch_speedup']:.2f}x | "
            f"{r['onnxruntime_speedup']:.2f}x | {r['ort_over_pt_speedup']:.2f} | "
            f"{r['ort_vs_pytorch']:.2f}x | {r['max_rel_err']:.1e} | {kept} |")
    return '\n'.join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default='benchmarks/results/deploy',
                        help='prefix of the .json / .md written')
    parser.add_argument('--threads', type=int, default=2,
                        help='torch.set_num_threads and ONNX Runtime intra-op threads')
    parser.add_argument('--groups', nargs='+', choices=('vit', 'swin'), default=['vit', 'swin'])
    parser.add_argument('--vit-batch-sizes', type=int, nargs='+', default=[1, 32])
    parser.add_argument('--swin-batch-sizes', type=int, nargs='+', default=[4])
    parser.add_argument('--swin-size', type=int, default=672)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--runs', type=int, default=10)
    parser.add_argument('--quick', action='store_true',
                        help='a check of the script: batch 1 and 2, Swin at 224, 2 runs')
    args = parser.parse_args(argv)
    if args.quick:
        args.vit_batch_sizes, args.swin_batch_sizes, args.swin_size = [1, 2], [1], 224
        args.warmup, args.runs = 1, 2

    from mmsparse.analysis.latency import thread_info
    from mmsparse.deploy import require_onnxruntime
    ort = require_onnxruntime()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix='mmsparse_deploy_') as work:
        if 'vit' in args.groups:
            rows += run_group('DeiT-S 224', vit_models(), 'model', (224, 224),
                              args.vit_batch_sizes, args.threads, args.warmup, args.runs, work)
        if 'swin' in args.groups:
            size = args.swin_size
            rows += run_group(f'Swin-T backbone {size}', swin_models(), 'backbone',
                              (size, size), args.swin_batch_sizes, args.threads, args.warmup,
                              args.runs, work)
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    meta = dict(thread_info(), onnxruntime=ort.__version__, torch=torch.__version__,
                threads=args.threads, warmup=args.warmup, runs=args.runs,
                seconds=round(time.time() - t0))
    with open(f'{args.out}.json', 'w') as f:
        json.dump(dict(meta, rows=rows), f, indent=2)
    table = markdown(rows)
    with open(f'{args.out}.md', 'w') as f:
        f.write(table + '\n')
    print(table)
    say(f'wrote {args.out}.json / .md ({meta["seconds"]} s)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
