"""UVC measured: budget met, real speed-up of the compact model, accuracy on real Fashion-MNIST.

Two parts (CPU; written to ``benchmarks/results/uvc.{md,json}``):

``--part deit``: a DeiT-S-shaped model (12 blocks, width 384, 6 heads, MLP 1536, 224x224,
197 tokens) searched by UVC stage 1 at budget 0.5. No ImageNet and no pretrained DeiT-S exist
on these machines, so the search runs ``--deit-steps`` primal-dual steps on *synthetic* images
(random pixels and labels) from a random initialisation: the weights mean nothing, the
architecture is what UVC's search produces for DeiT-S's shapes and token count. The hard
architecture is compacted and timed against the dense DeiT-S (interleaved, batch 32 and 1).

``--part fashion``: real Fashion-MNIST (60k train / 10k test), the demo ViT (6 blocks, width
96). Rows: the dense model (``make demo``'s checkpoint, trained here if missing); UVC stage 1
(one pass over ``--train-images`` training images, default all 60k) + stage 2 (one pass),
compacted; and uniform magnitude pruning to the same FLOPs (every block loses the same share
of value dims per head and MLP neurons, lowest squared column norms first) fine-tuned with the
stage-2 recipe (distillation from the same dense teacher) for one epoch (UVC's stage-2
fine-tuning budget) and for two (UVC's stage 1 + stage 2); ``--uniform-epochs`` picks them.
``--dense-finetune`` adds the dense model fine-tuned for two epochs.

    python benchmarks/uvc.py [--part deit fashion] [--deit-steps 60] [--runs 20]
"""
import argparse
import copy
import json
import os
import os.path as osp
import sys
import time

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DENSE_CFG = osp.join(REPO, 'configs/vit/vit-tiny-p4_fashion-mnist.py')
STAGE1_CFG = osp.join(REPO, 'configs/uvc/uvc-vit-tiny-p4_stage1_fashion-mnist.py')
STAGE2_CFG = osp.join(REPO, 'configs/uvc/uvc-vit-tiny-p4_stage2_fashion-mnist.py')
DENSE_CKPT = osp.join(REPO, 'work_dirs/demo/vit-tiny-p4_fashion-mnist/epoch_1.pth')


def log(msg: str) -> None:
    print(f'[uvc bench {time.strftime("%H:%M:%S")}] {msg}', flush=True)


# ---- DeiT-S: search, compaction, latency ------------------------------------------------------
UVC_DEIT_HEAD = dict(type='mmpretrain.VisionTransformerClsHead', num_classes=1000, in_channels=384)
UVC_DEIT_PREPROCESSOR = dict(type='mmpretrain.ClsDataPreprocessor', num_classes=1000,
                             mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                             to_rgb=True)


def search_deit_compact(steps: int = 60, batch: int = 4, arch_lr: float = 1e-3, zlr: float = 1.0,
                        round_to: int = 8, budget: float = 0.5, log=log) -> dict:
    """UVC stage 1 on DeiT-S shapes (synthetic images, random init, CPU), projected to the budget
    and compacted: the compact DeiT-S that UVC's search yields at ``budget``.

    Returns:
        ``model`` (the searched UVC model, eval), ``compact`` (the compact classifier, eval, CPU),
        ``uvc_cfg``, ``compact_cfg``, ``trace`` (FLOPs per step), ``real_flops_end_of_search``,
        ``projected_groups``, ``real_flops_final``, ``max_logit_diff`` (compact vs masked).
    """
    import torch
    from mmengine.registry import MODELS, init_default_scope
    from mmpretrain.structures import DataSample

    from mmsparse.compaction.uvc import compact_uvc_model, max_output_diff
    from mmsparse.engine.uvc_optim import UVCOptimWrapperConstructor

    init_default_scope('mmsparse')
    torch.manual_seed(0)
    uvc_cfg = dict(
        type='mmsparse.UVCClassifier', _scope_='mmpretrain', budget=budget, warmup_epochs=0,
        distill=False, dual_init=0.1, arch_grad_clip=2.0, arch_precondition='flops',
        score_normalize='sum', resource_penalty=40.0, gating_interval=10,
        backbone=dict(type='mmsparse.UVCVisionTransformer', arch='deit-small', img_size=224,
                      patch_size=16, block_gating='gumbel'),
        head=UVC_DEIT_HEAD, data_preprocessor=UVC_DEIT_PREPROCESSOR)
    model = MODELS.build(copy.deepcopy(uvc_cfg))
    model.init_weights()
    ow = UVCOptimWrapperConstructor(dict(
        weights=dict(optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05),
                     clip_grad=dict(max_norm=1.0)),
        arch=dict(optimizer=dict(type='SGD', lr=arch_lr)),
        gates=dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=1e-4)),
        duals=dict(optimizer=dict(type='SGD', lr=1e-4)),
        flops_dual=dict(optimizer=dict(type='SGD', lr=zlr))))(model)
    g = torch.Generator().manual_seed(0)
    model.train()
    trace = []
    t0 = time.time()
    for step in range(steps):
        data = dict(inputs=[torch.randint(0, 256, (3, 224, 224), generator=g, dtype=torch.uint8)
                            for _ in range(batch)],
                    data_samples=[DataSample().set_gt_label(int(torch.randint(1000, (1, ),
                                                                              generator=g)))
                                  for _ in range(batch)])
        out = model.train_step(data, ow)
        trace.append(dict(step=step + 1, flops_expected=out['flops_expected'],
                          flops_real=out['flops_real']))
        if (step + 1) % 10 == 0:
            log(f'DeiT-S search step {step + 1}: FLOPs expected {out["flops_expected"]:.4f}, '
                f'real {out["flops_real"]:.4f} ({time.time() - t0:.0f} s)')
    real_end = model.flops_fraction(hard=True)
    projected = model.project_to_budget(multiple=round_to)
    real_final = model.flops_fraction(hard=True)
    log(f'DeiT-S search done: real FLOPs {real_end:.4f} at the last step; end-of-search '
        f'projection removed {projected} groups -> {real_final:.4f}')
    model.eval()
    compact, ccfg = compact_uvc_model(model, uvc_cfg)
    diff = max_output_diff(model, compact, torch.randn(2, 3, 224, 224))
    return dict(model=model, compact=compact.eval(), uvc_cfg=uvc_cfg, compact_cfg=ccfg,
                trace=trace, real_flops_end_of_search=real_end, projected_groups=projected,
                real_flops_final=real_final, max_logit_diff=diff)


def deit_part(args) -> dict:
    from mmengine.registry import MODELS

    from mmsparse.analysis.report import markdown_table, profile_models

    found = search_deit_compact(args.deit_steps, args.deit_batch, args.deit_arch_lr,
                                args.deit_zlr, args.round_to)
    model, compact, ccfg, trace = (found['model'], found['compact'], found['compact_cfg'],
                                   found['trace'])
    real_end, projected, real_final, diff = (found['real_flops_end_of_search'],
                                             found['projected_groups'],
                                             found['real_flops_final'], found['max_logit_diff'])
    head, pre = UVC_DEIT_HEAD, UVC_DEIT_PREPROCESSOR
    dense = MODELS.build(dict(type='mmpretrain.ImageClassifier', _scope_='mmpretrain',
                              backbone=dict(type='VisionTransformer', arch='deit-small',
                                            img_size=224, patch_size=16),
                              head=head, data_preprocessor=pre)).eval()
    models = {'DeiT-S dense': dense, 'UVC DeiT-S budget 0.5 (compact)': compact}
    rows = {}
    for bs, runs in ((32, args.runs_bs32), (1, args.runs)):
        prof = profile_models(models, (224, 224), batch_sizes=(bs, ), warmup=args.warmup,
                              runs=runs)
        for row in prof:
            r = rows.setdefault(row['name'], dict(row, latency_ms={}, speedup={}))
            r['latency_ms'].update(row['latency_ms'])
            r['speedup'].update(row['speedup'])
    rows = list(rows.values())
    for row in rows:
        row['latency_ms'] = {bs: row['latency_ms'][bs] for bs in (1, 32)}
        row['speedup'] = {bs: row['speedup'][bs] for bs in (1, 32)}
        row['flops_fraction'] = row['gflops'] / rows[0]['gflops']
    table = markdown_table(rows, extra=[('flops_fraction', 'FLOPs vs dense', '.3f')])
    arch = model.uvc_backbone.arch_summary()
    return dict(rows=rows, table=table, search_trace=trace, real_flops_end_of_search=real_end,
                projected_groups=projected, real_flops_final=real_final, max_logit_diff=diff,
                architecture=arch, compact_layers=ccfg['backbone']['layers'],
                steps=args.deit_steps, batch=args.deit_batch, round_to=args.round_to,
                zlr=args.deit_zlr)


# ---- Fashion-MNIST: accuracy -------------------------------------------------------------------
def _runner(config: str, work_dir: str, load_from: str, options: dict = None):
    from mmsparse.utils import load_config
    from mmsparse.utils.cli import build_runner
    cfg = load_config(config, options)
    cfg.work_dir = work_dir
    cfg.load_from = load_from
    return cfg, build_runner(cfg, 'none')


def _top1(metrics: dict) -> float:
    return float(metrics['accuracy/top1'])


def _train_test(config, work_dir, load_from, options=None, setup=None):
    cfg, runner = _runner(config, work_dir, load_from, options)
    if setup is not None:
        setup(runner)
    t0 = time.time()
    runner.train()
    train_s = time.time() - t0
    metrics = runner.test()
    return cfg, runner, _top1(metrics), train_s


def _uniform_masks(model, dense_ckpt: str, target: float):
    """Uniform magnitude pruning: in every block the same number of neurons and of value dims
    per head go (lowest squared column norms of the dense weights), as few as reach
    ``target`` FLOPs. Writes the masks into the fixed-mode UVC model."""
    import torch

    from mmsparse.checkpoint import load_checkpoint_file
    from mmsparse.ops.uvc import group_scores, uvc_masks
    bb = model.uvc_backbone
    sd = load_checkpoint_file(dense_ckpt, map_location='cpu')['state_dict']
    L, H, hd, F = bb.num_layers, bb.num_heads, bb.head_dims, bb.mlp_dims
    proj = torch.stack([sd[f'backbone.layers.{i}.attn.proj.weight'] for i in range(L)])
    fc2 = torch.stack([sd[f'backbone.layers.{i}.ffn.layers.1.weight'] for i in range(L)])
    head_s, dim_s, neuron_s = group_scores(proj, fc2, H)
    best = None
    for step in range(1, 1000):
        ratio = step / 1000
        kd, kn = round(ratio * hd), round(ratio * F)
        if kd > hd - 1 or kn > F - 1:
            break
        masks = uvc_masks(head_s, dim_s, neuron_s, torch.zeros(L, dtype=torch.long),
                          torch.full((L, H), kd), torch.full((L, ), kn))
        with torch.no_grad():
            bb.mask_heads.copy_(masks.heads)
            bb.mask_dims.copy_(masks.dims)
            bb.mask_neurons.copy_(masks.neurons)
            bb.mask_blocks.fill_(1.0)
        frac = model.fixed_flops_fraction()
        if frac <= target:
            best = (ratio, kd, kn, frac)
            break
    if best is None:
        raise RuntimeError(f'uniform pruning cannot reach {target}')
    return best


def fashion_part(args) -> dict:
    work = osp.abspath(args.work_dir)
    os.makedirs(work, exist_ok=True)
    res = dict()
    # dense reference
    dense_ckpt = DENSE_CKPT
    if not osp.isfile(dense_ckpt):
        log('dense checkpoint missing: training the dense demo model (1 epoch)')
        _, _, _, _ = _train_test(DENSE_CFG, osp.join(work, 'dense'), None)
        dense_ckpt = osp.join(work, 'dense', 'epoch_1.pth')
    cfg, runner = _runner(DENSE_CFG, osp.join(work, 'dense_test'), dense_ckpt)
    res['dense'] = dict(top1=_top1(runner.test()), checkpoint=dense_ckpt)
    dense_model = runner.model
    log(f'dense: top-1 {res["dense"]["top1"]:.2f}')

    # UVC stage 1 + stage 2 (each one pass over --train-images training images)
    subset = dict(train_dataloader=dict(dataset=dict(indices=args.train_images)))
    if args.seed is not None:  # every training run below (stage 1, stage 2, the baselines)
        subset['randomness'] = dict(seed=args.seed)
    s1 = osp.join(work, 'uvc_stage1')
    cfg1, r1, top1_s1, t1 = _train_test(STAGE1_CFG, s1, dense_ckpt, subset)
    real_s1 = r1.model.flops_fraction(hard=True)
    log(f'UVC stage 1: real FLOPs {real_s1:.4f}, masked top-1 {top1_s1:.2f} ({t1:.0f} s)')
    s2 = osp.join(work, 'uvc_stage2')
    opts = dict(subset, custom_hooks=[dict(type='UVCHook'), dict(type='UVCCompactHook',
                                                                 swap_model=True)])
    cfg2, r2, top1_uvc, t2 = _train_test(STAGE2_CFG, s2, osp.join(s1, 'epoch_1.pth'), opts)
    uvc_compact = r2.model
    log(f'UVC stage 2 (compact): top-1 {top1_uvc:.2f} ({t2:.0f} s)')
    from mmsparse.analysis import count_flops, make_images
    from mmsparse.analysis.model_parts import part_module
    one = make_images(1, (28, 28), 1)
    dense_macs = count_flops(part_module(dense_model, 'model', one), (one, )).flops
    uvc_macs = count_flops(part_module(uvc_compact, 'model', one), (one, )).flops
    res['uvc'] = dict(top1_stage1_masked=top1_s1, real_flops_stage1=real_s1, top1=top1_uvc,
                      measured_flops_fraction=uvc_macs / dense_macs,
                      train_s=dict(stage1=t1, stage2=t2),
                      architecture=r1.model.uvc_backbone.arch_summary()
                      if hasattr(r1.model, 'uvc_backbone') else None)

    # uniform magnitude pruning to the same FLOPs, fine-tuned (with the stage-2 recipe) for
    # 1 epoch (UVC's stage-2 fine-tuning budget) and for 2 epochs (UVC's stage 1 + stage 2)
    target = real_s1
    uniform_models = {}
    for epochs in args.uniform_epochs:
        chosen = {}

        def setup(runner):
            chosen['v'] = _uniform_masks(runner.model, dense_ckpt, target)

        opts = dict(subset, train_cfg=dict(max_epochs=epochs), param_scheduler=[dict(
            type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=0, end=epochs,
            convert_to_iter_based=True)], custom_hooks=[dict(type='UVCCompactHook',
                                                             swap_model=True)])
        _, rb, top1_uni, tb = _train_test(STAGE2_CFG, osp.join(work, f'uniform_{epochs}ep'),
                                          dense_ckpt, opts, setup)
        ratio, kd, kn, frac = chosen['v']
        uni_macs = count_flops(part_module(rb.model, 'model', one), (one, )).flops
        key = f'uniform_{epochs}ep'
        res[key] = dict(top1=top1_uni, epochs=epochs, ratio=ratio, dims_removed_per_head=kd,
                        neurons_removed_per_block=kn, flops_fraction=frac,
                        measured_flops_fraction=uni_macs / dense_macs, train_s=tb)
        uniform_models[f'uniform magnitude, {epochs} epoch{"s" * (epochs > 1)} (compact)'] = (
            rb.model, top1_uni)
        log(f'uniform magnitude pruning ({frac:.4f} FLOPs), {epochs} epoch(s): top-1 '
            f'{top1_uni:.2f} ({tb:.0f} s)')

    if args.dense_finetune:
        dopts = dict(subset, train_cfg=dict(max_epochs=2), param_scheduler=[dict(
            type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=0, end=2,
            convert_to_iter_based=True)], optim_wrapper=dict(optimizer=dict(lr=5e-4)))
        _, _, top1_dft, tdf = _train_test(DENSE_CFG, osp.join(work, 'dense_ft'), dense_ckpt,
                                          dopts)
        res['dense_finetune'] = dict(top1=top1_dft, train_s=tdf)
        log(f'dense + 2 epochs: top-1 {top1_dft:.2f}')

    # latency of the final models, interleaved
    from mmsparse.analysis.report import markdown_table, profile_models
    models = {'ViT dense': dense_model, 'UVC budget 0.5 (compact)': uvc_compact}
    models.update({k: m for k, (m, _) in uniform_models.items()})
    rows = profile_models(models, (28, 28), 1, batch_sizes=(1, 32), runs=args.runs)
    top1 = {'ViT dense': res['dense']['top1'], 'UVC budget 0.5 (compact)': top1_uvc}
    top1.update({k: t for k, (_, t) in uniform_models.items()})
    for row in rows:
        row['top1'] = top1[row['name']]
        row['flops_fraction'] = row['gflops'] / rows[0]['gflops']
    res['train_images'] = args.train_images
    res['uniform_epochs'] = list(args.uniform_epochs)
    res['seed'] = args.seed
    res['rows'] = rows
    res['table'] = markdown_table(rows, extra=[('top1', 'top-1 (%)', '.2f'),
                                               ('flops_fraction', 'FLOPs vs dense', '.3f')])
    return res


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--part', nargs='+', default=['deit', 'fashion'],
                        choices=['deit', 'fashion'])
    parser.add_argument('--deit-steps', type=int, default=60)
    parser.add_argument('--deit-batch', type=int, default=4)
    parser.add_argument('--deit-arch-lr', type=float, default=1e-3)
    parser.add_argument('--deit-zlr', type=float, default=1.0,
                        help='step size of the budget dual in the DeiT-S search')
    parser.add_argument('--round-to', type=int, default=8,
                        help='end of the DeiT-S search: kept neurons / value dims rounded down '
                             'to multiples of this (UVCHook round_to)')
    parser.add_argument('--runs', type=int, default=20, help='timed runs (batch 1)')
    parser.add_argument('--runs-bs32', type=int, default=8, help='timed runs, DeiT-S batch 32')
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--dense-finetune', action='store_true')
    parser.add_argument('--train-images', type=int, default=60000,
                        help='training images per stage (UVC stage 1, stage 2; the baseline '
                             'gets two passes over them)')
    parser.add_argument('--seed', type=int, default=None,
                        help="randomness.seed of the Fashion-MNIST training runs (default: the "
                             "configs' seed, 0)")
    parser.add_argument('--uniform-epochs', type=int, nargs='+', default=[1, 2],
                        help="fine-tuning epochs of the uniform-pruning baseline (1: UVC's "
                             "stage-2 budget; 2: UVC's stage 1 + stage 2)")
    parser.add_argument('--work-dir', default='work_dirs/benchmarks/uvc')
    parser.add_argument('--out', default='benchmarks/results/uvc')
    args = parser.parse_args(argv)
    if any(e < 1 for e in args.uniform_epochs):
        parser.error(f'--uniform-epochs takes epochs >= 1, got {args.uniform_epochs}')
    os.makedirs(osp.dirname(args.out) or '.', exist_ok=True)
    path = f'{args.out}.json'
    results = json.load(open(path)) if osp.isfile(path) else {}
    if 'deit' in args.part:
        results['deit'] = deit_part(args)
        json.dump(results, open(path, 'w'), indent=2, default=str)
    if 'fashion' in args.part:
        results['fashion'] = fashion_part(args)
        json.dump(results, open(path, 'w'), indent=2, default=str)
    from mmsparse.analysis.latency import thread_info
    results['env'] = thread_info()
    json.dump(results, open(path, 'w'), indent=2, default=str)
    md = ['# UVC benchmark (CPU)', '']
    if 'deit' in results:
        d = results['deit']
        md += ['## DeiT-S at budget 0.5: compact vs dense (224x224)', '',
               f"Architecture from {d['steps']} UVC stage-1 steps (batch {d['batch']}) on "
               f"synthetic images from a random initialisation (no ImageNet here). Real FLOPs "
               f"at the end of the search: {d['real_flops_end_of_search']:.4f}; end-of-search "
               f"projection (and rounding of kept sizes to multiples of "
               f"{d.get('round_to', 1)}) "
               f"removed {d['projected_groups']} groups -> "
               f"{d['real_flops_final']:.4f} (budget 0.5). Compact vs masked model: max logit "
               f"difference {d['max_logit_diff']:.2e}.", '', d['table'], '']
    if 'fashion' in results:
        f = results['fashion']
        uni = f[f"uniform_{min(f['uniform_epochs'])}ep"]
        md += ['## Fashion-MNIST (real data, 10k test images)', '',
               f"UVC stage 1 real FLOPs {f['uvc']['real_flops_stage1']:.4f} (masked model "
               f"after the search: {f['uvc']['top1_stage1_masked']:.2f} %); uniform magnitude "
               f"pruning: {uni['dims_removed_per_head']} value dims per head and "
               f"{uni['neurons_removed_per_block']} neurons per block removed "
               f"({uni['flops_fraction']:.4f} FLOPs), fine-tuned with the stage-2 recipe for "
               f"{' and '.join(map(str, f['uniform_epochs']))} pass(es) over the "
               f"{f['train_images']} training images (1: UVC's stage-2 fine-tuning budget; 2: "
               f"UVC's stage 1 + stage 2). Training seed: "
               f"{0 if f.get('seed') is None else f['seed']}.", '', f['table'], '']
        if 'dense_finetune' in f:
            md += [f"Dense model fine-tuned 2 more epochs (the same budget): "
                   f"{f['dense_finetune']['top1']:.2f} %.", '']
    md += [f"threads {results['env']['torch_threads']}, device {results['env']['device']}, "
           f"torch {results['env']['torch']}"]
    with open(f'{args.out}.md', 'w') as fh:
        fh.write('\n'.join(md) + '\n')
    print('\n'.join(md))
    return 0


if __name__ == '__main__':
    sys.exit(main())
