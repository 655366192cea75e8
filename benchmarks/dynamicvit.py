"""DynamicViT against its dense model: FLOPs, eval latency and train-step time of DeiT-S at 224
(CPU or GPU), and accuracy on real Fashion-MNIST (CPU minutes).

    python benchmarks/dynamicvit.py [--runs 30] [--train-runs 5] [--train-batch 16]
        [--dense-ckpt work_dirs/demo/vit-tiny-p4_fashion-mnist/epoch_1.pth] [--skip-accuracy]

1. DeiT-S dense vs DynamicViT-DeiT-S (rho 0.7, pruning before blocks 3, 6, 9) vs the same keep
   counts chosen by token L2 norm (plain top-k, no predictors: what the predictors cost). FLOPs
   traced at batch 1; eval latency at batch 1 and 32, the models timed interleaved in one run
   (speed-ups from the same run). Weights are random: speed and FLOPs do not depend on them
   (fixed keep counts).
2. Train-step time (forward, backward, AdamW step) at ``--train-batch``, interleaved: dense,
   DynamicViT without the teacher (masked attention + predictors), DynamicViT with the teacher
   (the full recipe: one extra dense forward per step).
3. Fashion-MNIST (10k test images): the dense demo model; DynamicViT fine-tuned from it with
   configs/dynamicvit/dynamicvit-vit-tiny-p4_fashion-mnist.py; random token dropping at the same
   keep counts with the same fine-tuning; and, as a control, the dense model trained on with the
   same extra schedule.

Writes benchmarks/results/dynamicvit.md and .json.
"""
import argparse
import copy
import os
import os.path as osp
import sys
import tempfile

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DV_DEIT_S = osp.join(REPO, 'configs/dynamicvit/dynamicvit-deit-small_8xb128_in1k.py')
DV_FASHION = osp.join(REPO, 'configs/dynamicvit/dynamicvit-vit-tiny-p4_fashion-mnist.py')
DENSE_FASHION = osp.join(REPO, 'configs/vit/vit-tiny-p4_fashion-mnist.py')


def _cfg(text: str):
    from mmsparse.utils import load_config
    with tempfile.TemporaryDirectory() as tmp:
        path = osp.join(tmp, 'cfg.py')
        with open(path, 'w') as f:
            f.write(text)
        return load_config(path)


def _register_norm_topk() -> str:
    """Register the plain top-k reference backbone; returns its registry name."""
    from mmsparse.models.dynamicvit import DynamicVisionTransformer
    from mmsparse.registry import MODELS

    class NormTopKVisionTransformer(DynamicVisionTransformer):
        """DynamicViT's inference path with no predictors: the kept patch tokens are those of
        largest L2 norm (build with ``selector='random'``, which builds no predictors)."""

        def _scores(self, stage, x):
            return x[:, 1:].norm(dim=-1)  # (B, N)

    MODELS.register_module(module=NormTopKVisionTransformer, force=True)
    return 'mmsparse.NormTopKVisionTransformer'


def deit_models(device: str) -> dict:
    """DeiT-S dense, DynamicViT-DeiT-S, and plain top-k by token norm at the same keep counts.

    The plain top-k model is the backbone without predictors whose tokens are ranked by their
    L2 norm: the reference the predictors are measured against (what the same token pruning
    costs with a free score).
    """
    from mmsparse.utils import build_model
    dense = build_model(_cfg("_base_ = ['mmpretrain::deit/deit-small_4xb256_in1k.py']\n"
                             "default_scope = 'mmsparse'\n"
                             "model = dict(backbone=dict(init_cfg=None))\n"), device=device)
    dyn_text = (f"_base_ = ['{DV_DEIT_S}']\nload_from = None\n"
                "model = dict(distill={distill}, backbone=dict(type='{type}', "
                "selector='{selector}'))\n")
    dyn = build_model(_cfg(dyn_text.format(distill=True, type='mmsparse.DynamicVisionTransformer',
                                           selector='predictor')), device=device)
    norm = build_model(_cfg(dyn_text.format(distill=False, type=_register_norm_topk(),
                                            selector='random')), device=device)
    return {'DeiT-S dense': dense, 'DynamicViT-DeiT-S rho=0.7': dyn,
            'plain top-k by token norm, same keep counts': norm}


def train_step_fns(models: dict, batch: int, device: str, dtype=None) -> dict:
    """name -> a zero-argument training step (forward, loss, backward, AdamW step) of the model
    on one fixed batch of random 224x224 images; ``dtype`` (e.g. ``torch.bfloat16``): the forward
    under autocast to it (parameters and optimizer state stay float32)."""
    import contextlib

    import torch
    from mmengine.optim import OptimWrapper
    from mmpretrain.structures import DataSample

    x = torch.randn(batch, 3, 224, 224, device=device)
    samples = [DataSample().set_gt_label(i % 1000).to(device) for i in range(batch)]
    device_type = torch.device(device).type

    def make(model):
        params = [p for p in model.parameters() if p.requires_grad]
        wrapper = OptimWrapper(torch.optim.AdamW(params, lr=1e-6))

        def step():
            model.train()
            with (torch.autocast(device_type, dtype=dtype) if dtype is not None
                  else contextlib.nullcontext()):
                losses = model(x, samples, mode='loss')
            loss, _ = model.parse_losses(losses)
            wrapper.update_params(loss)

        return step

    return {name: make(model) for name, model in models.items()}


def train_step_times(models: dict, batch: int, runs: int, device: str, warmup: int = 1,
                     dtype=None) -> dict:
    """Trimmed-mean / median seconds of one training step per model, interleaved in one run
    (:func:`mmsparse.analysis.measure_latency`, autograd on); ``ratio``: against the first."""
    from mmsparse.analysis import measure_latency
    # warm-up: the first step of a DynamicViT with a teacher also copies the student
    lat = measure_latency(train_step_fns(models, batch, device, dtype), warmup=warmup,
                          runs=runs, grad=True)
    ref = lat[next(iter(models))].trimmed_mean_ms
    return {name: dict(trimmed_mean_s=r.trimmed_mean_ms / 1e3, median_s=r.median_ms / 1e3,
                       ratio=r.trimmed_mean_ms / ref, runs=runs, batch=batch)
            for name, r in lat.items()}


def fashion_run(config: str, work_dir: str, load_from: str, options: dict = None) -> float:
    """Train ``config`` from ``load_from`` (unless ``load_from`` is its result), test; top-1."""
    from mmsparse.utils import load_config
    from mmsparse.utils.cli import build_runner
    cfg = load_config(config, options)
    cfg.work_dir = work_dir
    cfg.load_from = load_from
    runner = build_runner(cfg, 'none')
    runner.train()
    return float(runner.test()['accuracy/top1'])


def fashion_test(config: str, checkpoint: str, work_dir: str) -> float:
    from mmsparse.utils import load_config
    from mmsparse.utils.cli import build_runner
    cfg = load_config(config)
    cfg.work_dir = work_dir
    cfg.load_from = checkpoint
    return float(build_runner(cfg, 'none').test()['accuracy/top1'])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--runs', type=int, default=30, help='timed eval runs per model')
    parser.add_argument('--warmup', type=int, default=5)
    parser.add_argument('--train-runs', type=int, default=5, help='timed train steps per model')
    parser.add_argument('--train-batch', type=int, default=16)
    parser.add_argument('--dense-ckpt', default=None,
                        help='trained dense demo checkpoint (default: train it, ~4 min)')
    parser.add_argument('--work-dir', default='work_dirs/benchmarks/dynamicvit')
    parser.add_argument('--skip-accuracy', action='store_true')
    parser.add_argument('--skip-speed', action='store_true')
    parser.add_argument('--out', default='benchmarks/results/dynamicvit')
    parser.add_argument('--device', default=None)
    args = parser.parse_args(argv)
    import torch

    from mmsparse.analysis.report import markdown_table, profile_models, write_report
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    os.makedirs(osp.dirname(args.out) or '.', exist_ok=True)
    os.makedirs(args.work_dir, exist_ok=True)
    sections, rows, meta = [], [], dict(device=device)

    if not args.skip_speed:
        models = deit_models(device)
        prof = profile_models(models, (224, 224), part='model', batch_sizes=(1, 32),
                              warmup=args.warmup, runs=args.runs, device=device)
        for row in prof:
            row['group'] = 'DeiT-S 224x224 eval'
        rows += prof
        sections.append(f'### DeiT-S, 224x224, eval ({device}, {torch.get_num_threads()} '
                        f'threads)\n\n' + markdown_table(prof))
        dyn = models['DynamicViT-DeiT-S rho=0.7']
        student = copy.deepcopy(dyn)
        student._set_teacher(None)
        train_models = {'DeiT-S dense': models['DeiT-S dense'],
                        'DynamicViT-DeiT-S (no teacher)': student,
                        'DynamicViT-DeiT-S + teacher': dyn}
        steps = train_step_times(train_models, args.train_batch, args.train_runs, device)
        meta['train_step'] = steps
        lines = ['| model | train step (s) | vs dense |', '|---|---|---|']
        lines += [f"| {n} | {s['trimmed_mean_s']:.3f} | {s['ratio']:.3f}x |"
                  for n, s in steps.items()]
        sections.append(f'### Train step, DeiT-S, batch {args.train_batch}, 224x224 '
                        f'(forward + backward + AdamW; trimmed mean of {args.train_runs}, '
                        f'interleaved)\n\n' + '\n'.join(lines))
        del models, train_models, student, dyn

    if not args.skip_accuracy:
        wd = args.work_dir
        dense_ckpt = args.dense_ckpt
        acc = {}
        if dense_ckpt is None:
            acc['dense demo model'] = fashion_run(DENSE_FASHION, osp.join(wd, 'dense'), None)
            dense_ckpt = osp.join(wd, 'dense', 'epoch_1.pth')
        else:
            acc['dense demo model'] = fashion_test(DENSE_FASHION, dense_ckpt,
                                                   osp.join(wd, 'dense_test'))
        acc['DynamicViT rho=0.7, fine-tuned'] = fashion_run(
            DV_FASHION, osp.join(wd, 'dynamicvit'), dense_ckpt)
        acc['random drop, same keep counts, same fine-tuning'] = fashion_run(
            DV_FASHION, osp.join(wd, 'random'), dense_ckpt,
            {'model.backbone.selector': 'random'})
        # control: the dense model trained on with the same extra schedule (backbone lr)
        from mmsparse.utils import load_config
        dv = load_config(DV_FASHION)
        scale = dv.custom_hooks[0]['backbone_lr_scale']
        acc['dense, same extra training (control)'] = fashion_run(
            DENSE_FASHION, osp.join(wd, 'dense_more'), dense_ckpt,
            {'train_dataloader.dataset.indices': dv.train_dataloader.dataset.indices,
             'train_dataloader.batch_size': dv.train_dataloader.batch_size,
             'optim_wrapper.optimizer.lr': dv.optim_wrapper.optimizer.lr * scale,
             'param_scheduler': dv.param_scheduler, 'auto_scale_lr': dv.auto_scale_lr})
        # FLOPs and latency of the Fashion-MNIST models (same runs' models rebuilt)
        from mmsparse.utils import build_model
        fm = {'dense demo model': build_model(load_config(DENSE_FASHION), dense_ckpt),
              'DynamicViT rho=0.7, fine-tuned': build_model(
                  load_config(DV_FASHION), osp.join(wd, 'dynamicvit', 'epoch_1.pth'))}
        prof = profile_models(fm, (28, 28), channels=1, batch_sizes=(1, 32), warmup=5,
                              runs=args.runs)
        for row in prof:
            row['group'] = 'Fashion-MNIST'
            row['top1'] = acc[row['name']]
        rows += prof
        meta['fashion_mnist_top1'] = acc
        lines = ['| model | top-1 (%) |', '|---|---|']
        lines += [f'| {n} | {a:.2f} |' for n, a in acc.items()]
        sections.append('### Fashion-MNIST test (10k images), CPU\n\n' + '\n'.join(lines)
                        + '\n\n' + markdown_table(prof, extra=[('top1', 'top-1 (%)', '.2f')]))

    table = '\n\n'.join(sections)
    write_report(rows, args.out, table, meta=meta)
    print(table)
    print(f'\n(written to {args.out}.md/.json)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
