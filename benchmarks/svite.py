"""SViTE / S²ViTE / SViTE+ measured: hook overhead, compact-model speed, token-selector speed,
accuracy on real Fashion-MNIST. Writes ``benchmarks/results/svite.{md,json}``.

    python benchmarks/svite.py [--sections overhead speed accuracy] [--runs 10]

- overhead: one training step of a dense model vs the same step with SparseTrainingHook, timed
  interleaved over whole update periods (the update iteration included); reported both as the
  hook's own time per step (its before/after-iteration work and the gradient capture) and as the
  difference of the two step times, each over the dense step time.
- speed: DeiT-S 224x224 dense vs compacted S²ViTE models (heads / MLP densities as masks drawn by
  StructuredSparseTrainingHook, compacted by mmsparse.compaction.svite, checked equal to the
  masked model) and vs SViTE+ token selectors keeping 90 % / 70 % of the patch tokens: FLOPs
  and latency at batch 1 and 32, interleaved in one run (untrained weights: speed only).
- accuracy: trains on the 60k Fashion-MNIST images and tests on the 10k test images (1 epoch,
  the dense demo recipe, from scratch, ``--seeds``): dense; SViTE density 0.5 (DST); one-shot
  magnitude pruning to 0.5 at initialisation with SViTE's per-layer (ERK) densities, mask then
  fixed (same budget): the ablation of SViTE's prune / regrow updates.
"""
import argparse
import copy
import json
import os
import os.path as osp
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO)

from mmsparse.analysis.latency import thread_info  # noqa: E402
from mmsparse.analysis.report import markdown_table, profile_models  # noqa: E402
from mmsparse.utils import build_model, load_config  # noqa: E402

DEMO = osp.join(REPO, 'configs/vit/vit-tiny-p4_fashion-mnist.py')
SVITE = osp.join(REPO, 'configs/svite/svite-vit-tiny-p4_density0.5_fashion-mnist.py')
STATIC = osp.join(REPO, 'configs/svite/svite-vit-tiny-p4_static-magnitude0.5_fashion-mnist.py')
DEIT_S = 'mmpretrain::deit/deit-small_4xb256_in1k.py'


class _Runner:
    """The attributes of a Runner the hooks read (the benchmark drives them directly)."""

    def __init__(self, model, max_iters: int, lr: float = 1e-3):
        from mmengine.logging import MessageHub, MMLogger
        from mmengine.optim import OptimWrapper
        self.model = model
        self.optim_wrapper = OptimWrapper(torch.optim.AdamW(model.parameters(), lr=lr))
        self.iter, self.max_iters, self.seed = 0, max_iters, 0
        self.message_hub = MessageHub.get_instance(f'svite-bench-{id(self)}')
        self.logger = MMLogger.get_instance(f'svite-bench-{id(self)}', log_level='WARNING')


def _zoo_cfg(zoo: str, **backbone):
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        path = osp.join(tmp, 'cfg.py')
        with open(path, 'w') as f:
            f.write(f"_base_ = ['{zoo}']\ndefault_scope = 'mmsparse'\n"
                    'model = dict(backbone=dict(init_cfg=None))\n')
        cfg = load_config(path)
    cfg.model.backbone.update(backbone)
    return cfg


# ---- overhead ------------------------------------------------------------------------------
def overhead(name: str, cfg, batch_size: int, img: int, channels: int, interval: int,
             periods: int, config_interval: int, density: float = 0.5) -> dict:
    """Time dense steps and hooked steps interleaved over ``periods`` update periods.

    The hook's own time is split into ordinary iterations (masks applied after the step) and
    update iterations (gradient capture, prune / regrow, masks applied), so that its overhead
    can also be given for the update interval of the config (``config_interval``), which is
    too long to time here: ``(ordinary * (I - 1) + update) / I / dense step``.
    """
    from mmsparse.engine import SparseTrainingHook
    torch.manual_seed(0)
    dense = build_model(cfg)
    dense.train()
    sparse = copy.deepcopy(dense)
    steps = interval * periods
    r_dense = _Runner(dense, steps + 1)
    r_sparse = _Runner(sparse, steps + 1)
    hook = SparseTrainingHook(density=density, update_interval=interval, stop_ratio=1.0,
                              log_layers=False)
    hook_time = [0.0]
    capture = hook._capture_grads  # timed: it runs inside the optimizer step

    def timed_capture(*args):
        t0 = time.perf_counter()
        capture(*args)
        hook_time[0] += time.perf_counter() - t0

    hook._capture_grads = timed_capture
    hook.before_run(r_sparse)
    hook.before_train(r_sparse)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, channels, img, img, generator=g)
    y = torch.randint(0, 10, (batch_size, ), generator=g)

    def step(runner, with_hook: bool) -> tuple:
        hook_time[0] = 0.0
        t0 = time.perf_counter()
        if with_hook:
            hook.before_train_iter(runner, runner.iter)
            hook_time[0] += time.perf_counter() - t0
        loss = F.cross_entropy(runner.model(x, mode='tensor'), y)
        runner.optim_wrapper.update_params(loss)
        if with_hook:
            t1 = time.perf_counter()
            hook.after_train_iter(runner, runner.iter)
            hook_time[0] += time.perf_counter() - t1
        runner.iter += 1
        return time.perf_counter() - t0, hook_time[0]

    for _ in range(2):  # warm-up (no update: iterations 1, 2)
        step(r_dense, False)
        step(r_sparse, True)
    r_dense.iter = r_sparse.iter = 0
    t_dense, t_sparse, h_plain, h_update = [], [], [], []
    for i in range(steps):
        t_dense.append(step(r_dense, False)[0])
        t, h = step(r_sparse, True)
        t_sparse.append(t)
        (h_update if (i + 1) % interval == 0 else h_plain).append(h)
    d = sum(t_dense) / steps
    s = sum(t_sparse) / steps
    plain = sum(h_plain) / len(h_plain)
    update = sum(h_update) / len(h_update)
    h = (sum(h_plain) + sum(h_update)) / steps

    def at(n):
        return (plain * (n - 1) + update) / n / d

    return dict(name=name, batch_size=batch_size, update_interval=interval, steps=steps,
                updates=len(hook.history), dense_step_ms=d * 1e3, sparse_step_ms=s * 1e3,
                hook_ms_per_step=h * 1e3, hook_ms_ordinary_step=plain * 1e3,
                hook_ms_update_step=update * 1e3, hook_overhead=h / d,
                step_time_overhead=s / d - 1, config_update_interval=config_interval,
                hook_overhead_at_config_interval=at(config_interval),
                density=hook.stats()['density'])


# ---- speed ----------------------------------------------------------------------------------
def s2vite_compact(cfg, head_density: float, mlp_density: float, seed: int = 0):
    """A DeiT-S S²ViTE model with masks drawn by the hook, compacted; returns (model, info)."""
    from mmsparse.compaction.svite import compact_backbone_cfg, compact_state_dict
    from mmsparse.engine import StructuredSparseTrainingHook
    scfg = copy.deepcopy(cfg)
    scfg.model.backbone.type = 'mmsparse.SViTEVisionTransformer'
    torch.manual_seed(seed)
    masked = build_model(scfg)
    hook = StructuredSparseTrainingHook(head_density=head_density, mlp_density=mlp_density,
                                        update_interval=1, seed=seed, log_layers=False)
    runner = _Runner(masked, 10)
    hook.before_run(runner)
    hook.before_train(runner)
    masked.eval()
    head_dims = [b.attn.head_dims for b in hook.blocks]
    ccfg = copy.deepcopy(cfg)
    ccfg.model.backbone = compact_backbone_cfg(scfg.model.backbone.to_dict(), hook.head_masks,
                                               hook.neuron_masks, head_dims)
    compact = build_model(ccfg)
    compact.load_state_dict(compact_state_dict(masked.state_dict(), hook.head_masks,
                                               hook.neuron_masks, head_dims), strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        diff = float((masked(x, mode='tensor') - compact(x, mode='tensor')).abs().max())
    blocks = sum(p.numel() for n, p in masked.named_parameters() if '.layers.' in n
                 and ('attn' in n or 'ffn' in n))
    kept = sum(p.numel() for n, p in compact.named_parameters() if '.layers.' in n
               and ('attn' in n or 'ffn' in n))
    info = dict(head_density=head_density, mlp_density=mlp_density,
                heads=ccfg.model.backbone.num_heads[0], mlp_dims=ccfg.model.backbone.mlp_dims[0],
                block_param_sparsity=1 - kept / blocks,
                param_sparsity=1 - sum(p.numel() for p in compact.parameters())
                / sum(p.numel() for p in masked.parameters()),
                max_abs_diff_vs_masked=diff)
    return compact, info


def speed(runs: int, warmup: int, batch_sizes) -> tuple:
    cfg = _zoo_cfg(DEIT_S)
    torch.manual_seed(0)
    models = {'DeiT-S dense': build_model(cfg)}
    infos = {}
    for hd, md in ((0.7, 0.6), (0.6, 0.6)):
        compact, info = s2vite_compact(cfg, hd, md)
        name = (f'S²ViTE-S compact, heads {hd} ({info["heads"]}/6), MLP {md} '
                f'({info["mlp_dims"]}/1536): {100 * info["block_param_sparsity"]:.0f}% '
                f'block sparsity')
        models[name], infos[name] = compact, info
    for keep in (0.9, 0.7):
        tcfg = _zoo_cfg(DEIT_S, type='mmsparse.SViTEVisionTransformer', token_keep=keep)
        torch.manual_seed(0)
        m = build_model(tcfg)
        name = f'SViTE+-S tokens {keep} ({m.backbone.num_kept_tokens()}/196 + cls)'
        models[name], infos[name] = m, dict(token_keep=keep,
                                            kept_tokens=m.backbone.num_kept_tokens())
    rows = profile_models(models, (224, 224), 3, batch_sizes=batch_sizes, warmup=warmup,
                          runs=runs)
    for r in rows:
        r.update(infos.get(r['name'], {}))
        r['flops_ratio'] = r['gflops'] / rows[0]['gflops']
    return rows


# ---- accuracy ------------------------------------------------------------------------------
def _train_test(config: str, work_dir: str, reuse: bool, epochs: int = 1, extra=()) -> float:
    ckpt = osp.join(work_dir, f'epoch_{epochs}.pth')
    out = osp.join(work_dir, 'test_metrics.json')
    if epochs != 1:  # the demo recipe stretched: cosine over all epochs (SViTE's stop_ratio and
        # death-rate schedule follow the runner's max_iters by themselves)
        extra = (*extra, f'train_cfg.max_epochs={epochs}', f'param_scheduler.1.end={epochs}')
    if not (reuse and osp.isfile(out)):
        if not (reuse and osp.isfile(ckpt)):
            subprocess.run([sys.executable, 'tools/train.py', config, '--work-dir', work_dir,
                            '--cfg-options', *extra], cwd=REPO, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run([sys.executable, 'tools/test.py', config, ckpt, '--work-dir',
                        osp.join(work_dir, 'test'), '--out', out, '--out-item', 'metrics'],
                       cwd=REPO, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(out) as f:
        return float(json.load(f)['accuracy/top1'])


# (key, description, config); every run trains from scratch (``--epochs``, default 1)
ACCURACY_RUNS = [
    ('dense', 'dense', DEMO),
    ('svite', 'SViTE density 0.5 (DST: ERK, prune / regrow every 100 iterations)', SVITE),
    ('static', 'one-shot magnitude pruning to 0.5 at init (ERK per layer, as SViTE), mask '
     'fixed (same budget)', STATIC),
]


def accuracy(work_root: str, reuse: bool, seeds, epochs: int = 1) -> dict:
    """Every run of :data:`ACCURACY_RUNS` once per seed (``randomness.seed``), ``epochs`` long."""
    rows = []
    t0 = time.time()
    for key, name, config in ACCURACY_RUNS:
        for seed in seeds:
            tag = '' if epochs == 1 else f'_e{epochs}'
            work_dir = osp.join(work_root, f'{key}{tag}_s{seed}')
            t = time.time()
            top1 = _train_test(config, work_dir, reuse, epochs, (f'randomness.seed={seed}', ))
            rows.append(dict(key=key, name=name, seed=seed, config=osp.relpath(config, REPO),
                             top1=top1, minutes=(time.time() - t) / 60))
            print(f'{name}, seed {seed}: top-1 {top1:.2f} ({(time.time() - t0) / 60:.1f} min '
                  f'so far)', flush=True)
    summary = []
    for key, name, config in ACCURACY_RUNS:
        tops = [r['top1'] for r in rows if r['key'] == key]
        summary.append(dict(key=key, name=name, config=osp.relpath(config, REPO), top1=tops,
                            mean=sum(tops) / len(tops)))
    return dict(rows=rows, summary=summary, seeds=list(seeds), epochs=epochs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sections', nargs='+', default=['overhead', 'speed', 'accuracy'],
                        choices=['overhead', 'speed', 'accuracy'])
    parser.add_argument('--runs', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--batch-sizes', type=int, nargs='+', default=[1, 32])
    parser.add_argument('--periods', type=int, default=2,
                        help='update periods timed in the overhead section')
    parser.add_argument('--work-dir', default=osp.join(REPO, 'work_dirs/svite_bench'))
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2],
                        help='seeds of the accuracy runs (randomness.seed)')
    parser.add_argument('--epochs', type=int, default=1,
                        help='training epochs of every accuracy run (the demo recipe: 1)')
    parser.add_argument('--reuse', action='store_true',
                        help='reuse trained checkpoints / metrics from an earlier run')
    parser.add_argument('--out', default=osp.join(REPO, 'benchmarks/results/svite'))
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f'--epochs takes an int >= 1, got {args.epochs}')
    os.makedirs(osp.dirname(args.out), exist_ok=True)
    old = {}
    if osp.isfile(args.out + '.json'):  # keep the sections not re-run
        with open(args.out + '.json') as f:
            old = json.load(f)
    result = dict(old, **thread_info(), cpu_count=os.cpu_count())
    load = os.getloadavg()
    if 'overhead' in args.sections:
        demo = load_config(DEMO)
        rows = [overhead('demo ViT (Fashion-MNIST, 0.68 M params)', demo, 64, 28, 1,
                         interval=20, periods=args.periods, config_interval=100)]
        deit = _zoo_cfg(DEIT_S)
        rows.append(overhead('DeiT-S (224x224, 22 M params)', deit, 8, 224, 3, interval=10,
                             periods=args.periods, config_interval=15000))
        result['overhead'] = dict(rows=rows, load_avg_1min_at_start=load[0])
        print(json.dumps(rows, indent=1), flush=True)
    if 'speed' in args.sections:
        rows = speed(args.runs, args.warmup, args.batch_sizes)
        result['speed'] = dict(rows=rows, load_avg_1min_at_start=load[0])
        print(markdown_table(rows), flush=True)
    if 'accuracy' in args.sections:
        key = 'accuracy' if args.epochs == 1 else f'accuracy_{args.epochs}ep'
        result[key] = dict(accuracy(args.work_dir, args.reuse, args.seeds, args.epochs),
                           load_avg_1min_at_start=load[0])
    with open(args.out + '.json', 'w') as f:
        json.dump(result, f, indent=2)
    with open(args.out + '.md', 'w') as f:
        f.write(render(result))
    print(render(result))
    return 0


def render(result: dict) -> str:
    parts = [f'# SViTE benchmarks ({result.get("device")}, {result.get("torch_threads")} torch '
             f'threads, {result.get("cpu_count")} CPUs)\n']
    if 'overhead' in result:
        parts.append('## Training-step overhead of SparseTrainingHook (density 0.5)\n')
        parts.append('Timed interleaved with the dense step over whole update periods of the '
                     'short interval below (update iterations included); the last column '
                     'combines the measured ordinary-step and update-step hook times for the '
                     "config's own update interval.\n")
        parts.append('| model | batch | update every | steps | dense step (ms) | with hook '
                     '(ms) | step-time difference | hook, ordinary step (ms) | hook, update '
                     'step (ms) | hook / dense step, this interval | hook / dense step, '
                     'config interval |')
        parts.append('|---|---|---|---|---|---|---|---|---|---|---|')
        for r in result['overhead']['rows']:
            parts.append(f"| {r['name']} | {r['batch_size']} | {r['update_interval']} | "
                         f"{r['steps']} | {r['dense_step_ms']:.1f} | {r['sparse_step_ms']:.1f} "
                         f"| {100 * r['step_time_overhead']:+.2f} % | "
                         f"{r['hook_ms_ordinary_step']:.2f} | {r['hook_ms_update_step']:.1f} | "
                         f"{100 * r['hook_overhead']:.2f} % | "
                         f"{100 * r['hook_overhead_at_config_interval']:.2f} % (every "
                         f"{r['config_update_interval']}) |")
        parts.append(f"\n(1-min load average at start: "
                     f"{result['overhead']['load_avg_1min_at_start']:.1f})\n")
    if 'speed' in result:
        parts.append('## DeiT-S 224x224: compacted S²ViTE and SViTE+ token selection vs dense '
                     '(inference, untrained weights)\n')
        parts.append(markdown_table(result['speed']['rows'],
                                    extra=[('flops_ratio', 'FLOPs vs dense', '.3f')]))
        parts.append(f"\n(1-min load average at start: "
                     f"{result['speed']['load_avg_1min_at_start']:.1f})\n")
    for key in sorted(k for k in result if k.startswith('accuracy')):
        acc = result[key]
        if 'summary' not in acc:
            continue
        seeds, epochs = acc['seeds'], acc.get('epochs', 1)
        parts.append(f'## Fashion-MNIST (60k train / 10k test), demo ViT, top-1 (%), {epochs} '
                     f'epoch{"s" * (epochs > 1)} from scratch\n')
        parts.append('| run | config | ' + ' | '.join(f'seed {s}' for s in seeds)
                     + ' | mean |')
        parts.append('|---|---|' + '---|' * (len(seeds) + 1))
        for r in acc['summary']:
            parts.append(f"| {r['name']} | `{r['config']}` | "
                         + ' | '.join(f'{t:.2f}' for t in r['top1']) + f" | {r['mean']:.2f} |")
        parts.append('')
    return '\n'.join(parts) + '\n'


if __name__ == '__main__':
    sys.exit(main())
