"""The accuracy / latency / FLOPs frontier of every method on real Fashion-MNIST (CPU).

    python benchmarks/frontier.py [--work-dir work_dirs/frontier] [--points NAME ...]
        [--runs 50] [--warmup 10] [--batch-sizes 1 32] [--quick]

Every point is a model trained here on the demo ViT (configs/vit/vit-tiny-p4_fashion-mnist.py:
6 blocks, width 96, 3 heads, 28x28 images in 49 patches of 4x4 + a class token) and tested on the
10k Fashion-MNIST test images (top-1). Points start from earlier points' checkpoints (the dense
point first), as ``make demo``'s rows do, with the Runner in-process:

- ``dense``: the dense demo ViT, one pass over the 60k training images.
- ``dynamicvit-<rho>`` (0.5, 0.7, 0.9): configs/dynamicvit/dynamicvit-vit-tiny-p4_fashion-mnist.py
  with ``model.backbone.keep_rate=rho``, from ``dense`` (its 150-iteration recipe: the
  predictors learn, the backbone and head stay frozen for its one epoch).
- ``svite-plus-<t>`` (0.5, 0.7): SViTE+ (weights at density 0.5 + a token selector keeping ``t``
  of the patch tokens), configs/svite/svite-plus-..._ft-from-dense_fashion-mnist.py with
  ``model.backbone.token_keep=t``, fine-tuned from ``dense``.
- ``uvc-<budget>`` (0.3, 0.5, 0.7): UVC's ``-demo`` stage 1 (100 search steps from ``dense``) and
  stage 2 (150 steps) with ``model.budget``; tested and profiled as the compact model that
  ``UVCCompactHook`` writes (``uvc_compact.py`` / ``.pth``).
- ``s2vite-<heads>-<mlp>`` ((0.7, 0.6): 2 of 3 heads and 230 of 384 neurons per layer; (0.4, 0.4):
  1 head and 153 neurons): configs/svite/s2vite-vit-tiny-p4_fashion-mnist.py with its
  ``StructuredSparseTrainingHook`` densities, *fine-tuned from ``dense``* (200 iterations on 12,800
  images, the SViTE+ fine-tuning recipe: a from-scratch S²ViTE epoch costs more than a dense
  epoch and starts from nothing), then compacted (:func:`mmsparse.compaction.
  compact_svite_checkpoint`): the profiled model is physically smaller.
- ``random-drop-0.7``: the DynamicViT recipe with ``selector='random'``: the keep counts of
  DynamicViT rho 0.7 (its FLOPs less the predictors'), tokens chosen uniformly at random, on
  the dense weights (the recipe freezes the backbone and head: it trains only predictors).
- ``uniform-magnitude``: every layer keeps the same number of heads and MLP neurons (largest
  weight L1 norm of ``dense``) at no more than the FLOPs of ``uvc-0.5``'s compact model
  (:func:`mmsparse.compaction.compact_magnitude_checkpoint`), cut into a
  ``CompactVisionTransformer`` and fine-tuned as long as UVC's stage 2 (its schedule and
  optimizer; plain cross-entropy: UVC's stage 2 also distils from the dense model).
- compositions: ``uvc-0.5+dynamicvit-0.7`` (configs/compose/dynamicvit-uvc-...budget0.5..., the
  compact model of ``uvc-0.5`` as ``model.compact_checkpoint``, distilling from that compact
  model), ``s2vite-0.7-0.6+dynamicvit-0.7`` (configs/compose/dynamicvit-s2vite-..., on
  ``s2vite-0.7-0.6``'s compact file), and ``uvc-0.5+dynamicvit-0.7-dense-teacher`` (the first one
  distilling from the dense point instead: the compact-vs-dense teacher question, one row each).

Resumable: each point's result is ``<work-dir>/points/<name>.json`` (test top-1, the config,
options and checkpoint it was tested with, its cost); a point whose JSON and checkpoint exist is
reused. A killed run restarted with the same command continues: every training stage whose
checkpoint exists is skipped (a stage killed mid-way is trained again from its start).

After the points: one latency run of all the models interleaved (:func:`mmsparse.analysis.
report.profile_models`, batch 1 and 32, warm-up, trimmed mean), GFLOPs of each model as it runs
(eval mode: dropped tokens and cut layers counted as such), then ``<work-dir>/frontier.json``,
``frontier.md`` (the table: GFLOPs, latency, speed-up against ``dense`` in the same run, top-1,
on the Pareto front) and ``frontier.png`` (top-1 against latency at the largest batch size and
against GFLOPs, the Pareto fronts drawn, compositions marked). ``--quick``: a few training
iterations and 512 test images per point (default work dir ``work_dirs/frontier_quick``), to
check the pipeline end to end in minutes; its numbers mean nothing. ``--points``: those points
and the ones they start from are run (or reused) and make the report.
"""
import argparse
import copy
import gc
import json
import os
import os.path as osp
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


def _cfg_path(rel: str) -> str:
    return osp.join(REPO, 'configs', rel)


DENSE_CFG = _cfg_path('vit/vit-tiny-p4_fashion-mnist.py')
DV_CFG = _cfg_path('dynamicvit/dynamicvit-vit-tiny-p4_fashion-mnist.py')
SVITE_PLUS_CFG = _cfg_path(
    'svite/svite-plus-vit-tiny-p4_density0.5-tokens0.7_ft-from-dense_fashion-mnist.py')
UVC1_CFG = _cfg_path('uvc/uvc-vit-tiny-p4_stage1_fashion-mnist-demo.py')
UVC2_CFG = _cfg_path('uvc/uvc-vit-tiny-p4_stage2_fashion-mnist-demo.py')
S2VITE_CFG = _cfg_path('svite/s2vite-vit-tiny-p4_fashion-mnist.py')
COMPOSE_UVC_CFG = _cfg_path('compose/dynamicvit-uvc-vit-tiny-p4_budget0.5_fashion-mnist.py')
COMPOSE_S2VITE_CFG = _cfg_path('compose/dynamicvit-s2vite-vit-tiny-p4_fashion-mnist.py')

IMG_SIZE, CHANNELS = (28, 28), 1
# --quick: training images per point (a few iterations) and test images
QUICK_TRAIN_IMAGES = 256
QUICK_TEST_IMAGES = 512
# S²ViTE fine-tuning from the dense point: SViTE+'s from-dense recipe (first 12,800 training
# images = 200 iterations of 64, lr 5e-4, short warm-up, cosine), head / neuron updates every 50
# iterations until 80 % of training
S2VITE_FT_IMAGES = 12800
S2VITE_UPDATE_INTERVAL = 50


def say(msg: str) -> None:
    print(f'[frontier {time.strftime("%H:%M:%S")}] {msg}', flush=True)


# ---- the Pareto front (pure) -------------------------------------------------------------------
def pareto_front(costs: Sequence[float], scores: Sequence[float]) -> List[bool]:
    """Which points are not dominated: no other point has a lower-or-equal cost and a
    higher-or-equal score, one of them strictly.

    Args:
        costs: (P,) lower is better (latency, GFLOPs).
        scores: (P,) higher is better (top-1).

    Returns:
        (P,) True where the point is on the front (equal points are both on it).
    """
    if len(costs) != len(scores):
        raise ValueError(f'{len(costs)} costs but {len(scores)} scores')
    front = []
    for i, (c, s) in enumerate(zip(costs, scores)):
        dominated = any(cj <= c and sj >= s and (cj < c or sj > s)
                        for j, (cj, sj) in enumerate(zip(costs, scores)) if j != i)
        front.append(not dominated)
    return front


# ---- the points ----------------------------------------------------------------------------------
@dataclass
class Point:
    """One trained model of the frontier.

    Attributes:
        name: the ``--points`` name (also its folder under the work dir).
        label: the table / plot label.
        method: the family (colour in the plot).
        needs: points whose checkpoints it starts from.
        run: ``(ctx, point) -> spec``: trains (unless done) and returns what to test: ``config``,
            ``options`` (cfg options), ``checkpoint``, ``train_s`` (seconds spent now),
            ``extra`` (a JSON-able dict).
        composition: a composition of two methods (marked in the plot).
    """
    name: str
    label: str
    method: str
    needs: Tuple[str, ...]
    run: Callable[['Context', 'Point'], dict]
    composition: bool = False
    note: str = ''


@dataclass
class Context:
    """What the points share: the work dir, the schedule, the finished points' specs."""
    work_dir: str
    quick: bool
    done: Dict[str, dict] = field(default_factory=dict)
    _runs: int = 0

    def dir(self, *parts: str) -> str:
        return osp.join(self.work_dir, *parts)

    def training_overrides(self) -> dict:
        """Every training run: no validation (each point is tested once, afterwards), loader
        workers that end with the (single) epoch instead of outliving the in-process runner;
        with --quick a few iterations on the first training images, no loader workers."""
        out = {'val_dataloader': None, 'val_cfg': None, 'val_evaluator': None,
               'default_hooks.checkpoint.save_best': None,
               'train_dataloader.persistent_workers': False}
        if self.quick:
            out.update({'train_dataloader.dataset.indices': QUICK_TRAIN_IMAGES,
                        'train_dataloader.num_workers': 0})
        return out

    def test_overrides(self) -> dict:
        out = {'custom_hooks': [], 'test_dataloader.num_workers': 0,
               'test_dataloader.persistent_workers': False}
        if self.quick:
            out['test_dataloader.dataset.indices'] = QUICK_TEST_IMAGES
        return out

    def _runner(self, config: str, options: dict, work_dir: str, load_from: Optional[str]):
        from mmsparse.utils import load_config
        from mmsparse.utils.cli import build_runner
        cfg = load_config(config, copy.deepcopy(options))
        cfg.work_dir = work_dir
        cfg.load_from = load_from
        # one name per runner: MMEngine keys its logger and visualizer instances by it
        self._runs += 1
        cfg.experiment_name = f'frontier_{time.strftime("%Y%m%d_%H%M%S")}_{self._runs}'
        return cfg, build_runner(cfg, 'none')

    def train(self, config: str, options: dict, work_dir: str, load_from: Optional[str]
              ) -> float:
        """Train ``config`` (+ ``options`` + :meth:`training_overrides`); seconds taken."""
        _, runner = self._runner(config, dict(options, **self.training_overrides()), work_dir,
                                 load_from)
        t0 = time.time()
        runner.train()
        secs = time.time() - t0
        del runner
        gc.collect()
        return secs

    def trained(self, config: str, options: dict, work_dir: str, load_from: Optional[str]
                ) -> Tuple[str, float]:
        """The final epoch checkpoint of ``config`` in ``work_dir``: reused if it exists, else
        trained now. Returns ``(checkpoint, seconds spent now)``."""
        from mmsparse.utils import load_config
        epochs = load_config(config, copy.deepcopy(options)).train_cfg['max_epochs']
        ckpt = osp.join(work_dir, f'epoch_{epochs}.pth')
        if osp.isfile(ckpt):
            say(f'  reusing {osp.relpath(ckpt, self.work_dir)}')
            return ckpt, 0.0
        if load_from is not None and not osp.isfile(load_from):
            raise FileNotFoundError(f'{load_from} (the checkpoint this stage starts from) is '
                                    f'missing')
        say(f'  training {osp.relpath(config, REPO)} -> {osp.relpath(work_dir, self.work_dir)}')
        return ckpt, self.train(config, options, work_dir, load_from)

    def test(self, spec: dict, work_dir: str) -> Tuple[float, float]:
        """Top-1 (%) of ``spec``'s model on the test images; seconds taken."""
        _, runner = self._runner(spec['config'], dict(spec['options'], **self.test_overrides()),
                                 work_dir, spec['checkpoint'])
        t0 = time.time()
        top1 = float(runner.test()['accuracy/top1'])
        secs = time.time() - t0
        del runner
        gc.collect()
        return top1, secs

    def checkpoint(self, name: str) -> str:
        return self.done[name]['checkpoint']


def build(spec: dict):
    """The eval model of a point's spec (CPU)."""
    from mmsparse.utils import build_model, load_config
    return build_model(load_config(spec['config'], copy.deepcopy(spec['options'])),
                       spec['checkpoint'])


def macs(spec: dict) -> float:
    """Traced MACs of a point's model on one image (as it runs, eval mode)."""
    from mmsparse.analysis import count_flops, make_images
    from mmsparse.analysis.model_parts import part_module
    model = build(spec)
    one = make_images(1, IMG_SIZE, CHANNELS)
    return float(count_flops(part_module(model, 'model', one), (one, )).flops)


def _spec(config: str, options: dict, checkpoint: str, train_s: float, **extra) -> dict:
    return dict(config=config, options=options, checkpoint=checkpoint, train_s=train_s,
                extra=extra)


def _plain(value):
    """ConfigDicts / tuples -> plain dicts / lists (cfg options stored in JSON)."""
    if hasattr(value, 'to_dict'):
        value = value.to_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _json_file(path: str) -> Optional[dict]:
    return json.load(open(path)) if osp.isfile(path) else None


def _write_json(path: str, obj) -> None:
    """Write via a temporary file, so that a killed run never leaves half a JSON."""
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path + '.tmp', 'w') as f:
        json.dump(obj, f, indent=2, default=str)
    os.replace(path + '.tmp', path)


def run_dense(ctx: Context, p: Point) -> dict:
    ckpt, secs = ctx.trained(DENSE_CFG, {}, ctx.dir(p.name), None)
    return _spec(DENSE_CFG, {}, ckpt, secs)


def run_dynamicvit(rho: float, selector: str = 'predictor') -> Callable:
    def run(ctx: Context, p: Point) -> dict:
        opts = {'model.backbone.keep_rate': rho}
        if selector != 'predictor':
            opts['model.backbone.selector'] = selector
        ckpt, secs = ctx.trained(DV_CFG, opts, ctx.dir(p.name), ctx.checkpoint('dense'))
        return _spec(DV_CFG, opts, ckpt, secs)
    return run


def run_svite_plus(token_keep: float) -> Callable:
    def run(ctx: Context, p: Point) -> dict:
        opts = {'model.backbone.token_keep': token_keep}
        ckpt, secs = ctx.trained(SVITE_PLUS_CFG, opts, ctx.dir(p.name), ctx.checkpoint('dense'))
        return _spec(SVITE_PLUS_CFG, opts, ckpt, secs)
    return run


def run_uvc(budget: float) -> Callable:
    def run(ctx: Context, p: Point) -> dict:
        from mmsparse.checkpoint import load_checkpoint_file
        opts = {'model.budget': budget}
        s1, t1 = ctx.trained(UVC1_CFG, opts, ctx.dir(p.name, 'stage1'), ctx.checkpoint('dense'))
        s2_dir = ctx.dir(p.name, 'stage2')
        prefix = osp.join(s2_dir, 'uvc_compact')
        t2 = 0.0
        if osp.isfile(prefix + '.pth'):
            say(f'  reusing {osp.relpath(prefix, ctx.work_dir)}.pth')
        else:
            s2, t2 = ctx.trained(UVC2_CFG, opts, s2_dir, s1)  # UVCCompactHook writes prefix.*
            if not osp.isfile(prefix + '.pth'):  # stage 2 trained, killed before the hook
                from mmsparse.compaction.uvc import compact_checkpoint
                from mmsparse.utils import load_config
                compact_checkpoint(load_config(UVC2_CFG, dict(opts)), s2, prefix)
        meta = load_checkpoint_file(prefix + '.pth', map_location='cpu').get('meta', {})
        uvc = meta.get('uvc', {})
        return _spec(prefix + '.py', {}, prefix + '.pth', t1 + t2,
                     stage_s=dict(stage1=t1, stage2=t2),
                     uvc_flops_fraction=uvc.get('source_flops_fraction'),
                     architecture=uvc.get('architecture'),
                     compact_structure=meta.get('compact_structure'))
    return run


def s2vite_options(head_density: float, mlp_density: float, quick: bool) -> dict:
    """The S²ViTE config's options for a fine-tuning from the dense point at these densities."""
    interval = 2 if quick else S2VITE_UPDATE_INTERVAL  # --quick: a few iterations, one update
    return {
        'custom_hooks': [dict(type='StructuredSparseTrainingHook', head_density=head_density,
                              mlp_density=mlp_density, update_interval=interval,
                              stop_ratio=0.8, death_rate=0.5, death_rate_min=0.005)],
        'train_dataloader.dataset.indices': S2VITE_FT_IMAGES,
        'optim_wrapper.optimizer.lr': 5e-4,
        'param_scheduler': [
            dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=20),
            dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=0, end=1,
                 convert_to_iter_based=True)],
    }


def run_s2vite(head_density: float, mlp_density: float) -> Callable:
    def run(ctx: Context, p: Point) -> dict:
        from mmsparse.compaction import compact_svite_checkpoint
        from mmsparse.utils import load_config
        opts = s2vite_options(head_density, mlp_density, ctx.quick)
        ckpt, secs = ctx.trained(S2VITE_CFG, opts, ctx.dir(p.name), ctx.checkpoint('dense'))
        prefix = ctx.dir(p.name, 'compact', 's2vite_compact')
        report = _json_file(prefix + '_report.json')
        if report is None or not osp.isfile(prefix + '.pth'):
            cfg = load_config(S2VITE_CFG, dict(opts, **ctx.training_overrides()))
            report = compact_svite_checkpoint(cfg, ckpt, prefix, base_config=S2VITE_CFG)
            _write_json(prefix + '_report.json', report)
        return _spec(prefix + '.py', {}, prefix + '.pth', secs, trained_checkpoint=ckpt,
                     num_heads=report['num_heads'], mlp_dims=report['mlp_dims'],
                     compaction_max_abs_diff=report['max_abs_diff'])
    return run


def uvc_stage2_schedule() -> dict:
    """UVC's stage-2 fine-tuning (the -demo config): images, batch, optimizer, lr schedule."""
    from mmsparse.utils import load_config
    s2 = load_config(UVC2_CFG)
    return {'train_dataloader.dataset.indices': s2.train_dataloader.dataset.indices,
            'train_dataloader.batch_size': s2.train_dataloader.batch_size,
            'optim_wrapper': dict(_delete_=True, **_plain(s2.optim_wrapper)),
            'param_scheduler': _plain(s2.param_scheduler),
            'train_cfg': _plain(s2.train_cfg), 'auto_scale_lr': _plain(s2.auto_scale_lr)}


def run_uniform_magnitude(ctx: Context, p: Point) -> dict:
    from mmsparse.compaction import compact_magnitude_checkpoint
    from mmsparse.utils import load_config
    dense, uvc = ctx.done['dense'], ctx.done['uvc-0.5']
    prefix = ctx.dir(p.name, 'compact', 'uniform_compact')
    report = _json_file(prefix + '_report.json')
    if report is None or not osp.isfile(prefix + '.pth'):
        # the FLOPs of UVC's compact model as traced, as a fraction of the dense model's
        target = macs(uvc) / macs(dense)
        report = compact_magnitude_checkpoint(load_config(DENSE_CFG), dense['checkpoint'],
                                              prefix, target=target, base_config=DENSE_CFG)
        report['target'] = target
        _write_json(prefix + '_report.json', report)
    ckpt, secs = ctx.trained(prefix + '.py', uvc_stage2_schedule(), ctx.dir(p.name, 'finetune'),
                             prefix + '.pth')
    return _spec(prefix + '.py', {}, ckpt, secs, target_flops_fraction=report['target'],
                 flops_fraction=report['measured_flops_fraction'],
                 heads_per_layer=report['heads'], neurons_per_layer=report['neurons'])


def run_compose(config: str, base: str, dense_teacher: bool = False) -> Callable:
    def run(ctx: Context, p: Point) -> dict:
        opts = {'model.compact_checkpoint': ctx.checkpoint(base)}
        if dense_teacher:
            opts.update({'model.teacher': DENSE_CFG,
                         'model.teacher_checkpoint': ctx.checkpoint('dense')})
        # load_from None: the backbone starts from the compact checkpoint (init_weights)
        ckpt, secs = ctx.trained(config, opts, ctx.dir(p.name), None)
        return _spec(config, opts, ckpt, secs)
    return run


POINTS: List[Point] = [
    Point('dense', 'ViT dense', 'dense', (), run_dense),
    *[Point(f'dynamicvit-{r}', f'DynamicViT ρ={r}', 'DynamicViT', ('dense', ), run_dynamicvit(r),
            note='predictors trained on the frozen dense model (the config: 150 iterations)')
      for r in (0.5, 0.7, 0.9)],
    *[Point(f'svite-plus-{t}', f'SViTE+ tokens {t} (density 0.5)', 'SViTE+', ('dense', ),
            run_svite_plus(t), note='fine-tuned from dense (200 iterations)')
      for t in (0.5, 0.7)],
    *[Point(f'uvc-{b}', f'UVC budget {b} (compact)', 'UVC', ('dense', ), run_uvc(b),
            note='from dense: stage 1 100 + stage 2 150 iterations') for b in (0.3, 0.5, 0.7)],
    *[Point(f's2vite-{h}-{m}', f'S²ViTE heads {h} / MLP {m} (compact)', 'S²ViTE', ('dense', ),
            run_s2vite(h, m), note='fine-tuned from dense (200 iterations), compacted')
      for h, m in ((0.7, 0.6), (0.4, 0.4))],
    Point('random-drop-0.7', 'random token drop (ρ=0.7 counts)', 'baseline', ('dense', ),
          run_dynamicvit(0.7, 'random'),
          note="dense weights (the DynamicViT schedule trains only predictors: none here)"),
    Point('uniform-magnitude', 'uniform magnitude (UVC 0.5 FLOPs, compact)', 'baseline',
          ('dense', 'uvc-0.5'), run_uniform_magnitude,
          note='cut from dense, fine-tuned 150 iterations (UVC stage 2 schedule, no distillation)'),
    Point('uvc-0.5+dynamicvit-0.7', 'UVC 0.5 + DynamicViT ρ=0.7', 'composition', ('uvc-0.5', ),
          run_compose(COMPOSE_UVC_CFG, 'uvc-0.5'), composition=True,
          note='teacher: the UVC compact model'),
    Point('s2vite-0.7-0.6+dynamicvit-0.7', 'S²ViTE 0.7/0.6 + DynamicViT ρ=0.7', 'composition',
          ('s2vite-0.7-0.6', ), run_compose(COMPOSE_S2VITE_CFG, 's2vite-0.7-0.6'),
          composition=True, note='teacher: the S²ViTE compact model'),
    Point('uvc-0.5+dynamicvit-0.7-dense-teacher', 'UVC 0.5 + DynamicViT ρ=0.7 (dense teacher)',
          'composition', ('uvc-0.5', 'dense'),
          run_compose(COMPOSE_UVC_CFG, 'uvc-0.5', dense_teacher=True), composition=True,
          note='teacher: the dense point'),
]
POINT_NAMES = [p.name for p in POINTS]


def select_points(names: Optional[Sequence[str]]) -> List[Point]:
    """The named points and every point they start from, in run order (all if None)."""
    from mmsparse.utils.cli import UserError
    if names is None:
        return list(POINTS)
    unknown = [n for n in names if n not in POINT_NAMES]
    if unknown:
        raise UserError(f'--points: unknown {unknown}; choose from {POINT_NAMES}')
    by_name = {p.name: p for p in POINTS}
    wanted, todo = set(), list(names)
    while todo:
        n = todo.pop()
        if n not in wanted:
            wanted.add(n)
            todo.extend(by_name[n].needs)
    wanted.add('dense')  # the reference of every speed-up
    return [p for p in POINTS if p.name in wanted]


def run_point(ctx: Context, p: Point) -> dict:
    """The point's result, reused from its JSON or trained (what is missing) and tested."""
    path = ctx.dir('points', f'{p.name}.json')
    res = _json_file(path)
    if res is not None and osp.isfile(res['checkpoint']):
        say(f'{p.name}: reused ({path}): top-1 {res["top1"]:.2f} %')
        # what the point *is* comes from its definition here, what it measured from the JSON
        res.update(label=p.label, method=p.method, composition=p.composition, note=p.note,
                   reused=True)
        return res
    say(f'{p.name}: {p.label}')
    t0 = time.time()
    spec = p.run(ctx, p)
    top1, test_s = ctx.test(spec, ctx.dir(p.name, 'test'))
    res = dict(name=p.name, label=p.label, method=p.method, composition=p.composition,
               note=p.note, quick=ctx.quick, top1=top1, config=spec['config'],
               options=_plain(spec['options']), checkpoint=spec['checkpoint'],
               train_s=spec['train_s'], test_s=test_s, point_s=time.time() - t0,
               needs={n: ctx.checkpoint(n) for n in p.needs}, extra=spec['extra'],
               finished=time.strftime('%Y-%m-%d %H:%M:%S'))
    _write_json(path, res)
    say(f'{p.name}: top-1 {top1:.2f} %, trained {spec["train_s"]:.0f} s, tested {test_s:.0f} s '
        f'(point {res["point_s"]:.0f} s)')
    res['reused'] = False
    return res


# ---- report --------------------------------------------------------------------------------------
def frontier_rows(results: List[dict], profile: List[dict], main_bs: int) -> List[dict]:
    """One row per point: its result, its profile (GFLOPs, latency, speed-up against dense) and
    whether it is on the Pareto front of top-1 against latency at ``main_bs`` and GFLOPs."""
    prof = {r['name']: r for r in profile}
    dense_gflops = prof[results[0]['label']]['gflops']
    rows = []
    for res in results:
        pr = prof[res['label']]
        rows.append(dict(
            name=res['name'], label=res['label'], method=res['method'],
            composition=res['composition'], top1=res['top1'], gflops=pr['gflops'],
            flops_fraction=pr['gflops'] / dense_gflops, mparams=pr['mparams'],
            latency_ms={int(k): v for k, v in pr['latency_ms'].items()},
            speedup={int(k): v for k, v in pr['speedup'].items()},
            train_s=res['train_s'], test_s=res['test_s'], note=res.get('note', ''),
            reused=bool(res.get('reused')),
            config=res['config'], options=res['options'], checkpoint=res['checkpoint'],
            extra=res['extra']))
    tops = [r['top1'] for r in rows]
    for r, on in zip(rows, pareto_front([r['latency_ms'][main_bs] for r in rows], tops)):
        r['pareto_latency'] = on
    for r, on in zip(rows, pareto_front([r['gflops'] for r in rows], tops)):
        r['pareto_gflops'] = on
    return rows


def markdown(rows: List[dict], batch_sizes: Sequence[int], main_bs: int, meta: dict) -> str:
    yes = {True: 'yes', False: 'no'}
    head = (['point', 'method', 'GFLOPs', 'FLOPs vs dense']
            + [f'latency bs{bs} (ms)' for bs in batch_sizes]
            + [f'speed-up bs{main_bs}', 'top-1 (%)', f'Pareto (latency bs{main_bs})',
               'Pareto (GFLOPs)'])
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for r in rows:
        cells = [f"`{r['name']}`", r['label'], f"{r['gflops']:.4f}", f"{r['flops_fraction']:.3f}"]
        cells += [f"{r['latency_ms'][bs]:.2f}" for bs in batch_sizes]
        cells += [f"{r['speedup'][main_bs]:.2f}x", f"{r['top1']:.2f}",
                  yes[r['pareto_latency']], yes[r['pareto_gflops']]]
        lines.append('| ' + ' | '.join(cells) + ' |')
    cost = ['| point | trained (s) | tested (s) | this run | note |', '|---|---|---|---|---|']
    cost += [f"| `{r['name']}` | {r['train_s']:.0f} | {r['test_s']:.0f} | "
             f"{'reused' if r['reused'] else 'made'} | {r['note']} |" for r in rows]
    env = meta['env']
    quick = ' --quick: a few iterations, numbers meaningless' if meta['quick'] else ''
    text = [
        '# Accuracy / latency / FLOPs frontier, demo ViT on Fashion-MNIST (CPU)', '',
        f"Top-1 on {meta['test_images']} Fashion-MNIST test images; every point trained here "
        f"(benchmarks/frontier.py{quick}). "
        f"GFLOPs: traced MACs at batch 1 of the model as it runs (eval). Latency: all models "
        f"interleaved in one run, trimmed mean of {meta['runs']} runs after {meta['warmup']} "
        f"warm-up, torch {env['torch']}, {env['torch_threads']} threads, {env['device']}; "
        f"speed-up against `dense` in the same run. Pareto: not dominated (lower-or-equal cost "
        f"and higher-or-equal top-1, one strictly).", '',
        '\n'.join(lines), '',
        f"Cost per point: training and test seconds when the point was made (a stage reused "
        f"from an earlier run counts 0). This run: {meta['total_s']:.0f} s for the points, "
        f"{meta['profile_s']:.0f} s profiling.", '',
        '\n'.join(cost), '']
    return '\n'.join(text)


METHOD_STYLE = {  # colour, marker
    'dense': ('black', 's'), 'DynamicViT': ('tab:blue', 'o'), 'SViTE+': ('tab:orange', 'D'),
    'UVC': ('tab:green', '^'), 'S²ViTE': ('tab:purple', 'v'), 'baseline': ('tab:gray', 'X'),
    'composition': ('tab:red', '*'),
}


def plot(rows: List[dict], main_bs: int, path: str, quick: bool) -> None:
    """Two panels: top-1 against latency at ``main_bs`` and against GFLOPs; Pareto fronts as
    dashed steps through ringed points; compositions as large red stars."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(15, 6.5))
    panels = ((lambda r: r['latency_ms'][main_bs], 'pareto_latency',
               f'latency, batch {main_bs} (ms)'), (lambda r: r['gflops'], 'pareto_gflops',
                                                     'GFLOPs (batch 1, as run)'))
    for ax, (x_of, key, xlabel) in zip(axes, panels):
        seen = set()
        for r in rows:
            color, marker = METHOD_STYLE.get(r['method'], ('tab:brown', 'o'))
            big = r['composition']
            ax.scatter(x_of(r), r['top1'], c=color, marker=marker, s=260 if big else 70,
                       edgecolors='black' if big else 'none', linewidths=0.8, zorder=3,
                       label=None if r['method'] in seen else r['method'])
            seen.add(r['method'])
            ax.annotate(r['name'], (x_of(r), r['top1']), textcoords='offset points',
                        xytext=(6, 4), fontsize=7, color='darkred' if big else 'black')
        front = sorted((x_of(r), r['top1']) for r in rows if r[key])
        if front:
            xs, ys = zip(*front)
            ax.step(xs, ys, where='post', ls='--', c='0.4', lw=1.2, zorder=2,
                    label='Pareto front')
            ax.scatter(xs, ys, s=420, facecolors='none', edgecolors='0.4', linewidths=1.0,
                       zorder=2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel('top-1 (%)')
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc='lower right')
    fig.suptitle('Demo ViT on Fashion-MNIST: accuracy against latency and FLOPs'
                 + (' (--quick: meaningless numbers)' if quick else ''))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- main ----------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--work-dir', default=None,
                        help='default work_dirs/frontier (--quick: work_dirs/frontier_quick)')
    parser.add_argument('--points', nargs='+', default=None,
                        help=f'points to run, with the points they start from (default all: '
                             f'{" ".join(POINT_NAMES)})')
    parser.add_argument('--runs', type=int, default=50, help='timed runs per model and batch')
    parser.add_argument('--warmup', type=int, default=10)
    parser.add_argument('--batch-sizes', type=int, nargs='+', default=[1, 32])
    parser.add_argument('--quick', action='store_true',
                        help=f'a few training iterations ({QUICK_TRAIN_IMAGES} images) and '
                             f'{QUICK_TEST_IMAGES} test images per point')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from mmsparse.utils.cli import UserError, positive_ints
    positive_ints(args.batch_sizes, '--batch-sizes')
    if args.runs < 1:
        raise UserError(f'--runs must be >= 1, got {args.runs}')
    if args.warmup < 0:
        raise UserError(f'--warmup must be >= 0, got {args.warmup}')
    batch_sizes = list(dict.fromkeys(args.batch_sizes))
    main_bs = 32 if 32 in batch_sizes else max(batch_sizes)
    points = select_points(args.points)
    work_dir = osp.abspath(args.work_dir or osp.join(
        REPO, 'work_dirs', 'frontier_quick' if args.quick else 'frontier'))
    # the configs' data root: absolute, whatever the current directory
    os.environ.setdefault('MMSPARSE_DATA', osp.join(REPO, 'data'))
    marker = osp.join(work_dir, 'run.json')
    prev = _json_file(marker)
    if prev is not None and bool(prev.get('quick')) != args.quick:
        raise UserError(f'--work-dir {work_dir} holds a {"--quick" if prev["quick"] else "full"} '
                        f'run; give another --work-dir for a {"--quick" if args.quick else "full"}'
                        f' one')
    _write_json(marker, dict(quick=args.quick, started=time.strftime('%Y-%m-%d %H:%M:%S')))

    from mmsparse.compat import quiet_pinned_stack_warnings
    quiet_pinned_stack_warnings()
    ctx = Context(work_dir, args.quick)
    results = []
    t_all = time.time()
    for p in points:
        res = run_point(ctx, p)
        ctx.done[p.name] = res
        results.append(res)
    total_s = time.time() - t_all
    say(f'points done in {total_s:.0f} s; profiling {len(results)} models at batch '
        f'{batch_sizes} ({args.runs} runs, interleaved)')

    from mmsparse.analysis.latency import thread_info
    from mmsparse.analysis.report import profile_models
    t0 = time.time()
    models = {res['label']: build(res) for res in results}
    profile = profile_models(models, IMG_SIZE, CHANNELS, batch_sizes=batch_sizes,
                             warmup=args.warmup, runs=args.runs)
    profile_s = time.time() - t0
    rows = frontier_rows(results, profile, main_bs)
    meta = dict(data='Fashion-MNIST', quick=args.quick,
                test_images=QUICK_TEST_IMAGES if args.quick else 10000,
                batch_sizes=batch_sizes, main_batch_size=main_bs, runs=args.runs,
                warmup=args.warmup, total_s=total_s, profile_s=profile_s, env=thread_info(),
                reused=[r['name'] for r in results if r.get('reused')])
    _write_json(osp.join(work_dir, 'frontier.json'), dict(meta=meta, rows=rows))
    md = markdown(rows, batch_sizes, main_bs, meta)
    with open(osp.join(work_dir, 'frontier.md'), 'w') as f:
        f.write(md)
    plot(rows, main_bs, osp.join(work_dir, 'frontier.png'), args.quick)
    print('\n' + md)
    say(f'written {work_dir}/frontier.json, frontier.md, frontier.png '
        f'({time.time() - t_all:.0f} s in all)')
    return 0


if __name__ == '__main__':
    from mmsparse.utils import run_cli
    run_cli(main)
