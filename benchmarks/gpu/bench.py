"""GPU evidence kit: every speed claim of mmsparse measured side by side in one run.

    python benchmarks/gpu/bench.py --out DIR [--device cuda|cpu] [--quick | --smoke]
        [--compile] [--sections vit swin train] [--dtypes fp32 bf16]
        [--vit-batch-sizes 1 32 128] [--swin-batch-sizes 1 4] [--swin-size 672]
        [--warmup N] [--repeats N] [--train-batch 64] [--uvc-steps 60]

On a machine without network, run it through ``benchmarks/gpu/run.sh`` after
``benchmarks/gpu/prepare.sh`` (README, "GPU benchmark kit"). Groups; the models of one group are
timed interleaved in one run (one call of each in turn, CUDA-synchronised, CUDA events on a GPU),
and every speed-up is against the group's dense reference from that same run:

- ``vit``: DeiT-S 224x224, eval (the classifier's logits): dense DeiT-S; DynamicViT-DeiT-S rho 0.7
  (configs/dynamicvit/dynamicvit-deit-small_8xb128_in1k.py); plain top-k by token norm at the
  same keep counts (benchmarks/dynamicvit.py); UVC compact at budget 0.5 (UVC stage 1 on DeiT-S
  shapes, benchmarks/uvc.py); S²ViTE compact with the head / MLP densities of
  configs/svite/s2vite-deit-small_8xb64_in1k.py (benchmarks/svite.py); SViTE+ keeping 70 % of the
  tokens (configs/svite/svite-plus-deit-small_tokens0.7_8xb64_in1k.py).
- ``swin``: Swin-T backbone at 672x672: dense (the SparseViT config with every window ratio 0)
  vs SparseViT cfg1 / cfg2 / cfg3 (benchmarks/sparsevit.py); plus mmdet's own Swin where its
  models import (mmcv with compiled ops), as a check of the reference.
- ``train``: one training step (forward, loss, backward, AdamW) of dense DeiT-S vs DynamicViT
  without and with its distillation teacher.
- ``--compile``: torch.compile of dense DeiT-S and DynamicViT (eval) against both in eager mode,
  at the last of ``--dtypes`` (bf16 on CUDA) only.

Each eval group at fp32 and under bf16 autocast; GFLOPs (multiply-accumulates, traced at batch 1
by mmsparse.analysis.count_flops) beside every speed-up. A batch size that does not fit in memory
makes that row "OOM" and the rest go on. Weights are untrained (speed only: keep counts, window
counts and compact sizes are fixed by the configs). Writes DIR/gpu_kit.json and DIR/gpu_kit.md.
"""
import argparse
import copy
import datetime
import gc
import json
import os
import os.path as osp
import platform
import sys
import time
import traceback
import warnings

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

S2VITE_CFG = osp.join(REPO, 'configs/svite/s2vite-deit-small_8xb64_in1k.py')
SVITE_PLUS_CFG = osp.join(REPO, 'configs/svite/svite-plus-deit-small_tokens0.7_8xb64_in1k.py')
# The compact DeiT-S that UVC's search (benchmarks/uvc.py, 60 stage-1 steps) found at budget 0.5,
# as the model config mmsparse.compaction.uvc wrote for it, with how it was produced. Building it
# takes a second; searching again (--uvc-steps) takes minutes on a CPU, most of them in the
# end-of-search projection to the budget.
UVC_CFG = osp.join(REPO, 'benchmarks/gpu/uvc_deit-small_budget0.5_compact.json')

SECTIONS = ('vit', 'swin', 'train')
DTYPES = ('fp32', 'bf16')

# What each mode measures, per device: batch sizes, repeats, sizes. The full CUDA plan ends in
# a few minutes on one H200 (under 8 with --compile); 'quick' is a subset, 'smoke' only checks
# that every row is produced (tests/test_gpu_kit.py).
PLANS = {
    'full': {
        'cuda': dict(vit_batch_sizes=[1, 32, 128], swin_batch_sizes=[1, 4], swin_size=672,
                     dtypes=['fp32', 'bf16'], warmup=20, repeats=100, train_batch=64,
                     train_dtype='bf16', train_warmup=3, train_repeats=30, uvc_steps=None,
                     compile_batch_sizes=[1, 128]),
        'cpu': dict(vit_batch_sizes=[1, 8], swin_batch_sizes=[1], swin_size=672,
                    dtypes=['fp32'], warmup=2, repeats=10, train_batch=8, train_dtype='fp32',
                    train_warmup=1, train_repeats=5, uvc_steps=None, compile_batch_sizes=[1]),
    },
    'quick': {
        'cuda': dict(vit_batch_sizes=[1, 128], swin_batch_sizes=[4], swin_size=672,
                     dtypes=['fp32', 'bf16'], warmup=10, repeats=30, train_batch=64,
                     train_dtype='bf16', train_warmup=2, train_repeats=10, uvc_steps=None,
                     compile_batch_sizes=[128]),
        'cpu': dict(vit_batch_sizes=[1, 4], swin_batch_sizes=[1], swin_size=672,
                    dtypes=['fp32'], warmup=1, repeats=5, train_batch=4, train_dtype='fp32',
                    train_warmup=1, train_repeats=3, uvc_steps=None, compile_batch_sizes=[1]),
    },
    'smoke': {
        dev: dict(vit_batch_sizes=[1], swin_batch_sizes=[1], swin_size=224,
                  dtypes=['fp32', 'bf16'] if dev == 'cuda' else ['fp32'], warmup=0, repeats=1,
                  train_batch=2, train_dtype='fp32', train_warmup=0, train_repeats=1,
                  uvc_steps=None, compile_batch_sizes=[1])
        for dev in ('cuda', 'cpu')
    },
}

T0 = time.time()


def say(msg: str) -> None:
    print(f'[gpu kit {time.time() - T0:6.1f} s] {msg}', flush=True)


class _Parser(argparse.ArgumentParser):
    """Bad flags end the program with one ``error:`` line (exit status 2)."""

    def error(self, message: str) -> None:
        print(f'error: {message} (see --help)', file=sys.stderr)
        sys.exit(2)


def parse_args(argv=None):
    parser = _Parser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', required=True, help='folder for gpu_kit.json and gpu_kit.md')
    parser.add_argument('--device', choices=['cuda', 'cpu'], default='cuda',
                        help='cuda (default; falls back to cpu with a warning) or cpu')
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument('--quick', action='store_true', help='a subset (~2 minutes on an H200)')
    mode.add_argument('--smoke', action='store_true',
                      help='tiny sizes, one repeat: checks that every row is produced')
    parser.add_argument('--compile', action='store_true',
                        help='also torch.compile dense DeiT-S and DynamicViT (eval)')
    parser.add_argument('--sections', nargs='+', choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument('--dtypes', nargs='+', choices=DTYPES, default=None,
                        help='eval precisions (default: fp32 bf16 on CUDA, fp32 on CPU)')
    parser.add_argument('--vit-batch-sizes', type=int, nargs='+', default=None)
    parser.add_argument('--swin-batch-sizes', type=int, nargs='+', default=None)
    parser.add_argument('--swin-size', type=int, default=None, help='Swin input side (672)')
    parser.add_argument('--warmup', type=int, default=None, help='untimed calls per model')
    parser.add_argument('--repeats', type=int, default=None, help='timed calls per model')
    parser.add_argument('--train-batch', type=int, default=None)
    parser.add_argument('--train-repeats', type=int, default=None)
    parser.add_argument('--uvc-steps', type=int, default=None,
                        help='search the UVC DeiT-S architecture anew: this many stage-1 steps '
                             '(then projected to budget 0.5; minutes on a CPU) instead of the '
                             'compact config stored in benchmarks/gpu/ (UVC_CFG)')
    args = parser.parse_args(argv)
    for flag in ('vit_batch_sizes', 'swin_batch_sizes'):
        if getattr(args, flag) is not None and min(getattr(args, flag)) < 1:
            parser.error(f'--{flag.replace("_", "-")} takes sizes >= 1, got {getattr(args, flag)}')
    for flag, low in (('swin_size', 32), ('repeats', 1), ('warmup', 0), ('train_batch', 1),
                      ('train_repeats', 1), ('uvc_steps', 1)):
        value = getattr(args, flag)
        if value is not None and value < low:
            parser.error(f'--{flag.replace("_", "-")} takes an int >= {low}, got {value}')
    return args


def make_plan(args, device: str) -> dict:
    mode = 'smoke' if args.smoke else 'quick' if args.quick else 'full'
    plan = dict(PLANS[mode][device], mode=mode, out=args.out)
    for key in ('vit_batch_sizes', 'swin_batch_sizes', 'swin_size', 'dtypes', 'warmup',
                'repeats', 'train_batch', 'train_repeats', 'uvc_steps'):
        if getattr(args, key) is not None:
            plan[key] = getattr(args, key)
    plan['sections'] = list(args.sections) + (['compile'] if args.compile else [])
    return plan


# ---- timing --------------------------------------------------------------------------------
def _is_oom(e: BaseException) -> bool:
    import torch
    return isinstance(e, torch.cuda.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and ('out of memory' in str(e)
                                         or "can't allocate memory" in str(e)))


def _free() -> None:
    import torch
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def time_group(fns: dict, warmup: int, repeats: int, timer: str, grad: bool = False) -> dict:
    """name -> LatencyResult, or 'OOM' for a callable that does not fit in memory.

    Each callable is called once alone first (an out-of-memory error there makes that model's
    row 'OOM' and the others go on); the rest are timed interleaved in one run.
    """
    import torch

    from mmsparse.analysis import measure_latency
    out, alive = {}, {}
    for name, fn in fns.items():
        try:
            with torch.enable_grad() if grad else torch.inference_mode():
                fn()
            alive[name] = fn
        except Exception as e:  # noqa: BLE001  (only out-of-memory is absorbed)
            if not _is_oom(e):
                raise
            out[name] = 'OOM'
        if name not in alive:
            _free()  # (outside the except clause: its traceback holds the tensors)
    if alive:
        try:
            out.update(measure_latency(alive, warmup=warmup, runs=repeats, timer=timer,
                                       grad=grad))
        except Exception as e:  # noqa: BLE001
            if not _is_oom(e):
                raise
            out.update({name: 'OOM' for name in alive})
        if any(out[name] == 'OOM' for name in alive):
            _free()
    return {name: out[name] for name in fns}


def autocast_call(fn, dtype: str, device: str):
    """``fn`` under bf16 autocast (``dtype='bf16'``) or as it is (fp32)."""
    if dtype == 'fp32':
        return fn
    import torch

    def call():
        with torch.autocast(device, dtype=torch.bfloat16):
            return fn()

    return call


def no_grad_call(fn):
    """``fn`` under ``no_grad`` outside inference mode (where :func:`time_group` calls it in
    inference mode): compiled graphs guard on the mode they were traced in, and torch.compile
    does not trace every model under inference mode; eager and compiled are timed alike."""
    import torch

    def call():
        with torch.inference_mode(False), torch.no_grad():
            return fn()

    return call


def eval_rows(group: str, models: dict, families: dict, part: str, img_size: tuple,
              batch_sizes, dtypes, warmup: int, repeats: int, device: str, timer: str,
              extra: dict = None) -> list:
    """FLOPs at batch 1, then latency per (dtype, batch size), all models interleaved.

    ``part``: 'model' (a classifier's logits, :mod:`mmsparse.analysis.model_parts`) or None (the
    module itself, e.g. a backbone built alone, called on the images).
    """
    from mmsparse.analysis import count_flops, make_images, part_callable, part_module

    def module_of(model, images):
        return model if part is None else part_module(model, part, images)

    def callable_of(model, images):
        return (lambda: model(images)) if part is None else part_callable(model, part, images)

    one = make_images(1, img_size, device=device)
    flops = {}
    for name, model in models.items():
        res = count_flops(module_of(model, one), (one, ))
        flops[name] = (res.gflops, res.mparams)
    ref = next(iter(models))
    rows = []
    for dtype in dtypes:
        for bs in batch_sizes:
            t0 = time.time()
            images = make_images(bs, img_size, device=device)
            fns = {name: autocast_call(callable_of(model, images), dtype, device)
                   for name, model in models.items()}
            lat = time_group(fns, warmup, repeats, timer)
            del fns, images
            _free()
            for name in models:
                rows.append(_row(group, name, families[name], dtype, bs, lat[name], lat[ref],
                                 flops[name], flops[ref], (extra or {}).get(name)))
            say(f'{group}: {dtype} batch {bs} done ({time.time() - t0:.1f} s)')
    return rows


def _row(group, name, family, dtype, bs, res, ref_res, flops, ref_flops, extra=None) -> dict:
    ok = not isinstance(res, str)
    ref_ok = not isinstance(ref_res, str)
    row = dict(group=group, name=name, family=family, dtype=dtype, batch=bs,
               status='ok' if ok else res, gflops=flops[0], mparams=flops[1],
               flops_vs_dense=flops[0] / ref_flops[0] if ref_flops[0] else None,
               latency_ms=res.trimmed_mean_ms if ok else None,
               median_ms=res.median_ms if ok else None, std_ms=res.std_ms if ok else None,
               speedup=ref_res.trimmed_mean_ms / res.trimmed_mean_ms if ok and ref_ok else None,
               runs=res.runs if ok else 0, warmup=res.warmup if ok else 0,
               timer=res.timer if ok else None)
    if extra:
        row.update(extra)
    return row


# ---- the models ----------------------------------------------------------------------------
def vit_models(plan: dict, device: str) -> tuple:
    """(models, families, extra info): the six DeiT-S models of the ``vit`` group."""
    import torch

    from benchmarks import dynamicvit, svite
    from mmsparse.utils import build_model, load_config

    base = dynamicvit.deit_models(device)
    names = list(base)  # dense, DynamicViT, plain top-k by norm
    models = {names[0]: base[names[0]], names[1]: base[names[1]], names[2]: base[names[2]]}
    families = {names[0]: 'deit-dense', names[1]: 'dynamicvit', names[2]: 'norm-topk'}
    keep = models[names[1]].backbone.keep_counts()
    extra = {names[1]: dict(kept_tokens=keep), names[2]: dict(kept_tokens=keep)}

    name = 'UVC DeiT-S budget 0.5 (compact)'
    models[name], extra[name] = uvc_compact(plan['uvc_steps'], device, plan['out'])
    families[name] = 'uvc'

    hook = next(h for h in load_config(S2VITE_CFG).custom_hooks
                if h['type'].endswith('StructuredSparseTrainingHook'))
    compact, info = svite.s2vite_compact(svite._zoo_cfg(svite.DEIT_S), hook['head_density'],
                                         hook['mlp_density'])
    name = (f'S²ViTE-S compact (heads {info["head_density"]}, MLP {info["mlp_density"]}: '
            f'{100 * info["block_param_sparsity"]:.0f} % of block weights removed)')
    models[name] = compact.to(device).eval()
    families[name] = 's2vite'
    extra[name] = info

    torch.manual_seed(0)
    plus = build_model(load_config(SVITE_PLUS_CFG), device=device)
    kept = plus.backbone.num_kept_tokens()
    name = f'SViTE+-S tokens 0.7 ({kept}/196 + cls)'
    models[name] = plus
    families[name] = 'svite-plus'
    extra[name] = dict(kept_tokens=kept)
    return models, families, extra


def uvc_record(found: dict, steps: int, seconds: float) -> dict:
    """What :data:`UVC_CFG` holds: the compact model config of a search and how it was found."""
    return dict(
        how=(f'benchmarks.uvc.search_deit_compact(steps={steps}): UVC stage 1 on DeiT-S shapes '
             f'(batch 4, synthetic images, random init, seed 0, CPU), projected to budget 0.5 '
             f'with kept sizes rounded to multiples of 8, compacted by mmsparse.compaction.uvc; '
             f're-made by benchmarks/gpu/bench.py --uvc-steps {steps} --out DIR '
             f'(DIR/{osp.basename(UVC_CFG)})'),
        steps=steps, budget=0.5, real_flops_end_of_search=found['real_flops_end_of_search'],
        projected_groups=found['projected_groups'], real_flops_final=found['real_flops_final'],
        max_logit_diff_vs_masked=found['max_logit_diff'],
        date=datetime.date.today().isoformat(), search_s=round(seconds),
        model=found['compact_cfg'])


def uvc_compact(steps, device: str, out_dir: str) -> tuple:
    """(model, info): the compact UVC DeiT-S of :data:`UVC_CFG`, or, with ``steps``, of a new
    search of that many steps (its record is written to ``out_dir`` under UVC_CFG's name)."""
    from mmengine.registry import MODELS

    from benchmarks import uvc
    if steps:
        say(f'UVC: {steps} stage-1 steps on DeiT-S shapes (CPU), projected to budget 0.5')
        t0 = time.time()
        found = uvc.search_deit_compact(steps=steps, log=say)
        path = osp.join(out_dir, osp.basename(UVC_CFG))
        with open(path, 'w') as f:
            json.dump(uvc_record(found, steps, time.time() - t0), f, indent=1)
        info = dict(source=f'searched in this run; {path}', uvc_steps=steps,
                    real_flops_final=found['real_flops_final'])
        return found['compact'].to(device).eval(), info
    with open(UVC_CFG) as f:
        stored = json.load(f)
    model = MODELS.build(copy.deepcopy(stored['model']))  # untrained: speed only
    info = dict(source=osp.relpath(UVC_CFG, REPO), uvc_steps=stored['steps'],
                real_flops_final=stored['real_flops_final'])
    return model.to(device).eval(), info


def run_vit(plan, device, timer, meta) -> list:
    t0 = time.time()
    models, families, extra = vit_models(plan, device)
    say(f'vit: {len(models)} models built ({time.time() - t0:.0f} s)')
    rows = eval_rows('DeiT-S 224x224 eval', models, families, 'model', (224, 224),
                     plan['vit_batch_sizes'], plan['dtypes'], plan['warmup'], plan['repeats'],
                     device, timer, extra)
    meta['vit_models'] = models  # the train and compile sections re-use them (not written)
    return rows


def run_swin(plan, device, timer) -> list:
    from benchmarks import sparsevit
    t0 = time.time()
    models = sparsevit.build_backbones(device)
    say(f'swin: {len(models)} backbones built ({time.time() - t0:.0f} s)')
    families = {name: 'swin-dense' if name.startswith('Swin-T dense') else 'sparsevit'
                for name in models}
    extra = {name: dict(window_ratios=[list(r) for r in m.window_ratios])
             for name, m in models.items() if hasattr(m, 'window_ratios')}
    size = plan['swin_size']
    rows = eval_rows(f'Swin-T backbone {size}x{size} eval', models, families, None,
                     (size, size), plan['swin_batch_sizes'], plan['dtypes'], plan['warmup'],
                     plan['repeats'], device, timer, extra)
    del models
    _free()
    return rows


def run_train(plan, device, timer, meta) -> list:
    import torch

    from benchmarks import dynamicvit
    vit = meta.get('vit_models') or dynamicvit.deit_models(device)
    names = list(vit)
    dense, dyn = vit[names[0]], vit[names[1]]
    student = copy.deepcopy(dyn)
    student._set_teacher(None)
    models = {'DeiT-S dense': dense, 'DynamicViT-DeiT-S rho=0.7 (no teacher)': student,
              'DynamicViT-DeiT-S rho=0.7 + teacher': dyn}
    families = ['deit-dense', 'dynamicvit', 'dynamicvit']
    dtype = plan['train_dtype']
    bs = plan['train_batch']
    t0 = time.time()
    fns = dynamicvit.train_step_fns(models, bs, device,
                                    torch.bfloat16 if dtype == 'bf16' else None)
    lat = time_group(fns, plan['train_warmup'], plan['train_repeats'], timer, grad=True)
    del fns
    _free()
    ref = lat['DeiT-S dense']
    rows = []
    for (name, res), family in zip(lat.items(), families):
        ok, ref_ok = not isinstance(res, str), not isinstance(ref, str)
        rows.append(dict(group='DeiT-S 224x224 train step', name=name, family=family,
                         dtype=dtype, batch=bs, status='ok' if ok else res,
                         latency_ms=res.trimmed_mean_ms if ok else None,
                         median_ms=res.median_ms if ok else None,
                         speedup=ref.trimmed_mean_ms / res.trimmed_mean_ms
                         if ok and ref_ok else None,
                         runs=res.runs if ok else 0, warmup=res.warmup if ok else 0,
                         timer=res.timer if ok else None))
    say(f'train: {dtype} batch {bs} done ({time.time() - t0:.1f} s)')
    for model in models.values():
        model.eval()
    return rows


def run_compile(plan, device, timer, meta) -> list:
    import torch

    from benchmarks import dynamicvit
    from mmsparse.analysis import make_images, part_module
    for key in ('recompile_limit', 'cache_size_limit', 'accumulated_recompile_limit',
                'accumulated_cache_size_limit'):
        if hasattr(torch._dynamo.config, key):  # 2 models x sizes x dtypes share one forward
            setattr(torch._dynamo.config, key, max(getattr(torch._dynamo.config, key), 64))
    vit = meta.get('vit_models') or dynamicvit.deit_models(device)
    names = list(vit)
    base = {'DeiT-S dense': vit[names[0]], 'DynamicViT-DeiT-S rho=0.7': vit[names[1]]}
    rows = []
    for dtype in plan['dtypes'][-1:]:  # one precision (bf16 on CUDA): each compile takes ~a minute
        for bs in plan['compile_batch_sizes']:
            images = make_images(bs, (224, 224), device=device)
            fns, families, compile_s, errors = {}, {}, {}, {}
            for name, model in base.items():
                module = part_module(model.eval(), 'model', images)
                eager, compiled = f'{name} (eager)', f'{name} (torch.compile)'
                fns[eager] = no_grad_call(autocast_call(lambda m=module, x=images: m(x), dtype,
                                                        device))
                fn = no_grad_call(autocast_call(
                    lambda c=torch.compile(module, dynamic=False), x=images: c(x), dtype, device))
                t0 = time.time()
                try:
                    with torch.inference_mode():
                        fn()
                        if device == 'cuda':
                            torch.cuda.synchronize()
                except Exception as e:  # noqa: BLE001  (a model that does not compile: noted)
                    if _is_oom(e):
                        raise
                    errors[compiled] = f'{type(e).__name__}: {str(e).splitlines()[0][:200]}'
                    say(f'compile: {compiled} failed: {errors[compiled]}')
                else:
                    fns[compiled] = fn
                compile_s[compiled] = time.time() - t0
                families[eager] = families[compiled] = ('deit-dense' if 'dense' in name
                                                        else 'dynamicvit')
            lat = time_group(fns, plan['warmup'], plan['repeats'], timer)
            ref = lat['DeiT-S dense (eager)']
            for name in list(fns) + list(errors):
                res = lat.get(name, 'error')
                ok, ref_ok = not isinstance(res, str), not isinstance(ref, str)
                rows.append(dict(group='DeiT-S 224x224 eval, torch.compile', name=name,
                                 family=families.get(name, 'deit-dense'), dtype=dtype, batch=bs,
                                 status='ok' if ok else res,
                                 latency_ms=res.trimmed_mean_ms if ok else None,
                                 speedup=ref.trimmed_mean_ms / res.trimmed_mean_ms
                                 if ok and ref_ok else None,
                                 compile_s=compile_s.get(name), error=errors.get(name),
                                 runs=res.runs if ok else 0, timer=res.timer if ok else None))
            del fns, images
            _free()
            say(f'compile: {dtype} batch {bs} done')
    return rows


# ---- report --------------------------------------------------------------------------------
def _cell(row: dict) -> str:
    if row['status'] != 'ok':
        return row['status']
    return f"{row['latency_ms']:.2f} ms ({row['speedup']:.2f}x)" if row['speedup'] else \
        f"{row['latency_ms']:.2f} ms"


def eval_table(rows: list) -> str:
    """One line per model: GFLOPs, FLOPs vs dense, then 'ms (speed-up)' per dtype and batch."""
    keys = list(dict.fromkeys((r['dtype'], r['batch']) for r in rows))
    names = list(dict.fromkeys(r['name'] for r in rows))
    cells = {(r['name'], r['dtype'], r['batch']): r for r in rows}
    head = ['model', 'GFLOPs', 'FLOPs vs dense'] + [f'{d} bs{b}' for d, b in keys]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for name in names:
        first = cells[(name, ) + keys[0]]
        line = [name, f"{first['gflops']:.3f}", f"{first['flops_vs_dense']:.3f}"]
        line += [_cell(cells[(name, ) + k]) for k in keys]
        lines.append('| ' + ' | '.join(line) + ' |')
    return '\n'.join(lines)


def simple_table(rows: list, extra_col: str = None) -> str:
    head = ['model', 'dtype', 'batch', 'time (ms)', 'speed-up vs dense']
    if extra_col:
        head.append(extra_col)
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for r in rows:
        ok = r['status'] == 'ok'
        line = [r['name'], r['dtype'], str(r['batch']),
                f"{r['latency_ms']:.2f}" if ok else r['status'],
                f"{r['speedup']:.2f}x" if ok and r['speedup'] else '-']
        if extra_col:
            line.append('-' if r.get('compile_s') is None else f"{r['compile_s']:.1f}")
        lines.append('| ' + ' | '.join(line) + ' |')
    return '\n'.join(lines)


def environment(device: str) -> dict:
    import torch

    from mmsparse.analysis import thread_info
    env = dict(thread_info(), python=platform.python_version(), machine=platform.machine(),
               cpu_count=os.cpu_count(), device_kind=device,
               date=datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'))
    if device == 'cuda':
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   capability='.'.join(map(str, torch.cuda.get_device_capability(0))),
                   cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                   tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                   tf32_cudnn=torch.backends.cudnn.allow_tf32)
    return env


def render(result: dict) -> str:
    env, plan = result['environment'], result['plan']
    where = (f"{env.get('gpu')} ({env.get('gpu_memory_gib')} GiB, CUDA {env.get('cuda')})"
             if env['device_kind'] == 'cuda' else f"CPU, {env['torch_threads']} torch threads "
             f"({env['cpu_count']} cores)")
    timer = 'CUDA events' if env['device_kind'] == 'cuda' else 'host clock'
    parts = [f"# mmsparse GPU evidence kit ({plan['mode']} run)", '',
             f"{env['date']}; {where}; torch {env['torch']}, Python {env['python']}. "
             f"Untrained weights (speed only). Each group's models timed interleaved in one run "
             f"({timer}, synchronised after every call; trimmed mean of {plan['repeats']} calls "
             f"after {plan['warmup']} warm-up); speed-ups against the group's first (dense) row "
             f"from that same run. GFLOPs: multiply-accumulates at batch 1. fp32 is plain fp32 "
             f"(TF32 {'on' if env.get('tf32_matmul') else 'off'}); bf16 is autocast.", '']
    groups = list(dict.fromkeys(r['group'] for r in result['rows']))
    for group in groups:
        rows = [r for r in result['rows'] if r['group'] == group]
        parts += [f'## {group}', '']
        if 'train' in group:
            parts += [f"Forward, loss, backward and AdamW step; trimmed mean of "
                      f"{plan['train_repeats']} steps after {plan['train_warmup']} warm-up, "
                      f"interleaved.", '', simple_table(rows), '']
        elif 'compile' in group:
            parts += [simple_table(rows, 'compile (s)'), '']
        else:
            parts += [eval_table(rows), '']
    notes = result.get('notes') or {}
    for key, value in notes.items():
        parts.append(f'- {key}: {value}')
    for key, value in (result.get('failed_sections') or {}).items():
        parts.append(f'- section {key} FAILED: {value}')
    parts.append(f"\nWhole run: {result['elapsed_s']:.0f} s.")
    return '\n'.join(parts) + '\n'


def main(args) -> int:
    warnings.filterwarnings('ignore', message='Fail to import ``MultiScaleDeformableAttention``')
    import torch
    device = args.device
    if device == 'cuda' and not torch.cuda.is_available():
        print('warning: CUDA is not available here; running on the CPU with CPU sizes',
              file=sys.stderr, flush=True)
        device = 'cpu'
    plan = make_plan(args, device)
    timer = 'cuda_event' if device == 'cuda' else 'wall'
    os.makedirs(args.out, exist_ok=True)
    import mmsparse  # noqa: F401  (stack check, registries)
    env = environment(device)
    say(f"{plan['mode']} run on {env.get('gpu', 'cpu')}: sections {' '.join(plan['sections'])}")
    rows, meta, notes, failed = [], {}, {}, {}
    result = dict(environment=env, plan=plan, args=vars(args), rows=rows, notes=notes,
                  failed_sections=failed, elapsed_s=0.0)
    steps = {'vit': lambda: run_vit(plan, device, timer, meta),
             'swin': lambda: run_swin(plan, device, timer),
             'train': lambda: run_train(plan, device, timer, meta),
             'compile': lambda: run_compile(plan, device, timer, meta)}
    for section in plan['sections']:
        try:
            rows += steps[section]()
        except Exception as e:  # noqa: BLE001  (a bug: reported, the other sections still run)
            traceback.print_exc()
            failed[section] = f'{type(e).__name__}: {e}'.splitlines()[0][:500]
            say(f'{section}: FAILED ({failed[section]})')
            _free()
        notes.update(section_notes(section, rows))
        result['elapsed_s'] = time.time() - T0
        text = write_outputs(args.out, result)  # after every section: a later failure or a
        # time limit keeps what was measured
    print(text)
    say(f"written {osp.join(args.out, 'gpu_kit.json')} and gpu_kit.md")
    return 1 if failed else 0


def section_notes(section: str, rows: list) -> dict:
    if section == 'vit' and any(r['family'] == 'uvc' for r in rows):
        uvc = next(r for r in rows if r['family'] == 'uvc')
        return {'UVC compact': f"architecture from {uvc['uvc_steps']} UVC stage-1 steps on "
                               f"DeiT-S shapes (synthetic images, batch 4, random init), "
                               f"projected to the budget: UVC's FLOPs fraction "
                               f"{uvc['real_flops_final']:.3f} ({uvc['source']})"}
    if section == 'swin' and any(r['family'] == 'swin-dense' for r in rows) and not any(
            r['name'] == 'Swin-T dense (mmdet)' for r in rows):
        return {'Swin reference': "mmdet's SwinTransformer not importable here (mmcv without "
                                  "compiled ops): the dense row is mmsparse's "
                                  "SparseSwinTransformer with every window ratio 0"}
    return {}


def write_outputs(out: str, result: dict) -> str:
    """Write DIR/gpu_kit.json and DIR/gpu_kit.md; returns the markdown."""
    with open(osp.join(out, 'gpu_kit.json'), 'w') as f:
        json.dump(result, f, indent=2, default=str)
    text = render(result)
    with open(osp.join(out, 'gpu_kit.md'), 'w') as f:
        f.write(text)
    return text

if __name__ == '__main__':
    ARGS = parse_args()  # flags first: a bad one costs no import of torch
    from mmsparse.utils import run_cli
    run_cli(lambda: main(ARGS))
