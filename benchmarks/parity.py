"""Behaviour parity: record each method's outputs on fixed seeds and inputs, or check them.

A refactoring that must not change behaviour is checked by recording before and comparing
after::

    python benchmarks/parity.py record work_dirs/parity/ref.pt    # on the old code
    python benchmarks/parity.py check work_dirs/parity/ref.pt     # on the new code

What is recorded, per method (the Fashion-MNIST configs as shipped, fixed random inputs):

- every model's ``state_dict`` as built by the old code: ``check`` loads it into the model the new
  code builds (strict), so old checkpoints must load, and every value below is computed from the
  same weights whatever order the new code creates its parameters in;
- eval logits, training-mode losses and the gradient of every parameter after one backward
  (Gumbel draws from a fixed torch seed), keep indices (DynamicViT), FLOPs;
- SViTE: masks after the hooks' start and after three mask updates, the structured hook's head /
  neuron masks and the compacted model's logits; SViTE+ selector outputs;
- UVC: gates, masks and FLOPs after two primal-dual steps, the duals, the end-of-search
  projection, and the compacted model's logits;
- SparseViT: stage outputs at ratio 0 and at a sparse setting, kept windows, FLOPs, and the
  SAA hook's draws for 20 iterations;
- the search: the JSON lines of a short evolutionary search on a deterministic stand-in latency
  and score.

``check`` prints one line per value and exits 1 when any differs: exactly for integers, masks and
indices, within ``--atol`` (1e-6) elsewhere. ``--only`` runs some sections.
"""
import argparse
import io
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SECTIONS: Dict[str, Callable] = {}


def section(fn):
    SECTIONS[fn.__name__] = fn
    return fn


class Recorder:
    """Collects named values; hands back recorded state dicts in check mode."""

    def __init__(self, ref=None):
        self.ref = ref
        self.values: Dict[str, object] = {}
        self.states: Dict[str, dict] = {}

    def put(self, name: str, value) -> None:
        self.values[name] = _copy(value)

    def weights(self, name: str, model: torch.nn.Module) -> None:
        """Record the model's weights, or (check) load the recorded ones into it."""
        if self.ref is None:
            self.states[name] = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            model.load_state_dict(self.ref['states'][name], strict=True)
            self.states[name] = self.ref['states'][name]


def _copy(value):
    """A deep copy with tensors detached (lists, tuples and dicts of them)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_copy(v) for v in value]
    return value


def _x(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=g)


def _samples(n=8):
    from mmpretrain.structures import DataSample
    return [DataSample().set_gt_label(i % 10) for i in range(n)]


def _raw_batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(inputs=[torch.randint(0, 255, (1, 28, 28), generator=g, dtype=torch.uint8)
                        for _ in range(n)], data_samples=_samples(n))


def _build(config: str, **model_updates):
    from mmsparse.utils import build_model, load_config
    cfg = load_config(str(REPO / config))
    for key, value in model_updates.items():
        node = cfg.model
        *path, last = key.split('.')
        for p in path:
            node = node[p]
        node[last] = value
    torch.manual_seed(0)
    model = build_model(cfg)
    return model, cfg


def _grads(model) -> Dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()
            if p.grad is not None}


def _loss_and_grads(rec: Recorder, tag: str, model, seed: int = 1) -> None:
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    losses = model(_x(), _samples(), mode='loss')
    total = sum(v for k, v in losses.items() if 'loss' in k)
    total.backward()
    for k, v in sorted(losses.items()):
        rec.put(f'{tag}/train/{k}', v)
    rec.put(f'{tag}/train/grads', _grads(model))
    model.zero_grad(set_to_none=True)


def _logits(model, x=None):
    model.eval()
    with torch.no_grad():
        return model(_x(seed=5) if x is None else x, mode='tensor')


def _flops(model, shape=(1, 1, 28, 28)) -> int:
    from mmsparse.analysis import count_flops, part_module
    model.eval()
    x = torch.randn(*shape)
    return int(count_flops(part_module(model, 'model', x), (x, )).flops)


class FakeRunner:
    """What the SViTE hooks read from a Runner."""

    def __init__(self, model, max_iters: int, seed: int = 0, lr: float = 2e-3):
        from mmengine.logging import MessageHub, MMLogger
        from mmengine.optim import OptimWrapper
        self.model = model
        self.optim_wrapper = OptimWrapper(torch.optim.AdamW(model.parameters(), lr=lr))
        self.iter, self.max_iters, self.seed = 0, max_iters, seed
        self.epoch, self.max_epochs = 0, 1
        name = f'parity-{id(self)}'
        self.message_hub = MessageHub.get_instance(name)
        self.logger = MMLogger.get_instance(name, log_level='WARNING')


def _drive(hook, runner, steps: int) -> List[float]:
    runner.model.train()
    hook.before_run(runner)
    hook.before_train(runner)
    losses = []
    for _ in range(steps):
        x = _x(seed=100 + runner.iter)
        y = torch.arange(8) % 10
        hook.before_train_iter(runner, runner.iter)
        loss = F.cross_entropy(runner.model(x, mode='tensor'), y)
        runner.optim_wrapper.update_params(loss)
        hook.after_train_iter(runner, runner.iter)
        losses.append(float(loss))
        runner.iter += 1
    return losses


# ---------------------------------------------------------------------------------------------
def _classifier(rec: Recorder, tag: str, config: str) -> None:
    """Weights, eval logits, one training loss + gradients and FLOPs of a config's model."""
    model, _ = _build(config)
    rec.weights(tag, model)
    rec.put(f'{tag}/eval/logits', _logits(model))
    _loss_and_grads(rec, tag, model)
    rec.put(f'{tag}/flops', _flops(model))


@section
def dense(rec: Recorder) -> None:
    _classifier(rec, 'dense', 'configs/vit/vit-tiny-p4_fashion-mnist.py')


@section
def dynamicvit(rec: Recorder) -> None:
    model, _ = _build('configs/dynamicvit/dynamicvit-vit-tiny-p4_fashion-mnist.py')
    rec.weights('dynamicvit', model)
    rec.put('dynamicvit/eval/logits', _logits(model))
    with torch.no_grad():
        (_, ), aux = model.backbone.forward_with_aux(model.data_preprocessor(
            dict(inputs=_x(seed=5)), False)['inputs'])
    rec.put('dynamicvit/eval/kept_indices', aux['kept_indices'])
    # training: Gumbel decisions from seed 1, the teacher copied from the student at first loss
    _loss_and_grads(rec, 'dynamicvit', model)
    torch.manual_seed(2)
    model.train()
    (_, ), aux = model.backbone.forward_with_aux(_x())
    rec.put('dynamicvit/train/decisions', aux['decisions'])
    rec.put('dynamicvit/flops', _flops(model))
    # keep ratios set at run time (the search's gene) reach FLOPs and the kept tokens
    model.backbone.keep_ratios = [0.9, 0.5]
    rec.put('dynamicvit/keep0.9-0.5/logits', _logits(model))
    rec.put('dynamicvit/keep0.9-0.5/flops', _flops(model))


@section
def svite_plus(rec: Recorder) -> None:
    _classifier(rec, 'svite_plus', 'configs/svite/svite-plus-vit-tiny-p4_fashion-mnist.py')


@section
def svite_dst(rec: Recorder) -> None:
    from mmsparse.engine import SparseTrainingHook
    for growth in ('gradient', 'momentum', 'random'):
        model, _ = _build('configs/vit/vit-tiny-p4_fashion-mnist.py')
        rec.weights(f'svite_dst_{growth}', model)
        runner = FakeRunner(model, max_iters=10)
        hook = SparseTrainingHook(density=0.5, update_interval=3, stop_ratio=0.9, seed=1,
                                  sparse_init='ERK', init_by='magnitude', growth=growth)
        losses = _drive(hook, runner, 10)
        tag = f'svite_dst/{growth}'
        rec.put(f'{tag}/losses', losses)
        rec.put(f'{tag}/masks', hook.masks)
        rec.put(f'{tag}/weights', model.state_dict())
        state = {}
        hook.before_save_checkpoint(runner, state)
        buf = io.BytesIO()
        torch.save(state, buf)
        rec.put(f'{tag}/checkpoint_keys', sorted(_flat_keys(state)))


def _flat_keys(d, prefix=''):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flat_keys(v, f'{prefix}{k}.')
        else:
            yield f'{prefix}{k}'


@section
def s2vite(rec: Recorder) -> None:
    from mmsparse.compaction.svite import compact_backbone_cfg, compact_state_dict
    from mmsparse.engine import StructuredSparseTrainingHook
    from mmsparse.utils import build_model
    model, cfg = _build('configs/svite/s2vite-vit-tiny-p4_fashion-mnist.py')
    rec.weights('s2vite', model)
    runner = FakeRunner(model, max_iters=8, lr=5e-3)
    hook = StructuredSparseTrainingHook(head_density=0.7, mlp_density=0.6, update_interval=2,
                                        score_iters=2, stop_ratio=1.0, neuron_growth='random')
    rec.put('s2vite/losses', _drive(hook, runner, 8))
    rec.put('s2vite/head_masks', hook.head_masks)
    rec.put('s2vite/neuron_masks', hook.neuron_masks)
    rec.put('s2vite/history', [{k: v for k, v in h.items()} for h in hook.history])
    rec.put('s2vite/logits', _logits(model))
    sd = model.state_dict()
    head_dims = [32] * 6
    csd = compact_state_dict(sd, hook.head_masks, hook.neuron_masks, head_dims)
    cfg.model.backbone = compact_backbone_cfg(cfg.model.backbone.to_dict(), hook.head_masks,
                                              hook.neuron_masks, head_dims)
    compact = build_model(cfg)
    compact.load_state_dict(csd, strict=True)
    rec.put('s2vite/compact/keys', sorted(csd))
    rec.put('s2vite/compact/logits', _logits(compact))
    rec.put('s2vite/compact/flops', _flops(compact))


@section
def uvc(rec: Recorder) -> None:
    from mmengine.optim import build_optim_wrapper
    from mmsparse.compaction.uvc import compact_uvc_model
    model, cfg = _build('configs/uvc/uvc-vit-tiny-p4_stage1_fashion-mnist.py', warmup_epochs=0)
    rec.weights('uvc', model)
    rec.put('uvc/eval/logits', _logits(model))
    rec.put('uvc/flops_fraction', model.flops_fraction())
    ow = build_optim_wrapper(model, cfg.optim_wrapper)
    model.train()
    for step in range(2):
        torch.manual_seed(10 + step)
        log = model.train_step(_raw_batch(seed=step), ow)
        rec.put(f'uvc/step{step}/log', {k: float(v) for k, v in log.items()})
    rec.put('uvc/after/arch', model.arch_parameters())
    rec.put('uvc/after/state', model.state_dict())
    masks = model.uvc_backbone.compute_masks()
    rec.put('uvc/after/masks', list(masks))
    rec.put('uvc/after/flops_fraction', model.flops_fraction())
    rec.put('uvc/after/eval_logits', _logits(model))
    rec.put('uvc/projection/removed', model.project_to_budget(multiple=8))
    rec.put('uvc/projection/flops_fraction', model.flops_fraction())
    rec.put('uvc/projection/arch', model.arch_parameters())
    model.eval()
    compact, ccfg = compact_uvc_model(model, cfg.model.to_dict())
    rec.put('uvc/compact/cfg', json.loads(json.dumps(ccfg['backbone'], default=str)))
    rec.put('uvc/compact/logits', _logits(compact))
    rec.put('uvc/compact/flops', _flops(compact))


TINY_SWIN = dict(embed_dims=32, depths=[2, 2, 4, 2], num_heads=[1, 2, 4, 8], drop_path_rate=0.)


@section
def sparsevit(rec: Recorder) -> None:
    from mmengine.logging import MessageHub
    from mmsparse.analysis import count_flops
    from mmsparse.engine import SparsityAwareAdaptationHook
    from mmsparse.models import SparseSwinTransformer
    torch.manual_seed(0)
    bb = SparseSwinTransformer(**TINY_SWIN)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in bb.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.2 if p.dim() > 1 else 0.05))
    rec.weights('sparsevit', bb)
    bb.eval()
    x = torch.randn(2, 3, 96, 112, generator=torch.Generator().manual_seed(3))
    for tag, ratios in (('dense', None), ('cfg3', [[0.7, 0.7], [0, 0], [0.2, 0.2, 0.5, 0.5],
                                                  [0, 0]])):
        if ratios is not None:
            bb.window_ratios = ratios
        bb.record_kept_windows(True)
        with torch.no_grad():
            outs = bb(x)
        rec.put(f'sparsevit/{tag}/outs', list(outs))
        rec.put(f'sparsevit/{tag}/kept', json.loads(json.dumps(
            bb.kept_windows, default=lambda t: t.tolist())))
        bb.record_kept_windows(False)
        rec.put(f'sparsevit/{tag}/flops', int(count_flops(bb, (x[:1], )).flops))
    bb.train()
    outs = bb(x)
    sum(o.square().mean() for o in outs).backward()
    rec.put('sparsevit/train/grads', _grads(bb))

    class Det(torch.nn.Module):
        def __init__(self, backbone):
            super().__init__()
            self.backbone = backbone

    runner = SimpleNamespace(model=Det(bb), iter=0, seed=7,
                             message_hub=MessageHub.get_instance('parity_saa'))
    hook = SparsityAwareAdaptationHook()
    hook.before_run(runner)
    draws = []
    for it in range(20):
        runner.iter = it
        hook.before_train_iter(runner, it)
        draws.append(bb.window_ratios)
    rec.put('sparsevit/saa_draws', json.loads(json.dumps(draws)))


@section
def search(rec: Recorder) -> None:
    from mmsparse.search import (DEFAULT_KEEP_CANDIDATES, EvolutionSearch, SearchSettings,
                                 keep_ratio_space, window_ratio_space)
    spaces = (('windows', window_ratio_space((2, 2, 6, 2), tuple(i / 10 for i in range(9))),
               (60.0, 80.0)),
              ('keep', keep_ratio_space(3, DEFAULT_KEEP_CANDIDATES), (80.0, 95.0)))
    for name, space, (low, high) in spaces:
        def latency(g):
            return 100.0 - 2.0 * sum(g) - g[0]

        def score(g):
            return float(g[0] * 10 - sum(g[1:3]) + 0.1 * g[-1])

        settings = SearchSettings(population_size=8, parents=3, mutation_prob=0.2,
                                  iterations=5, seed=3)
        history = []
        search = EvolutionSearch(space.genome_space, settings, decode=space.decode,
                                 latency_fn=latency, score_fn=score, min_latency=low,
                                 max_latency=high, on_iteration=history.append)
        result = search.run()
        rec.put(f'search/{name}/candidates', [
            json.loads(json.dumps(dict(key=c.key, genome=list(c.genome), phase=c.phase,
                                       latency=c.latency_ms, score=c.score,
                                       feasible=c.feasible), default=float))
            for c in search.cache.values()])
        rec.put(f'search/{name}/history', json.loads(json.dumps(history, default=float)))
        rec.put(f'search/{name}/best', result.best.key)


# ---------------------------------------------------------------------------------------------
def compare(name: str, a, b, atol: float) -> List[str]:
    """Differences between recorded ``a`` and new ``b`` (empty when they match)."""
    if isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor) or a.shape != b.shape or a.dtype != b.dtype:
            return [f'{name}: {_desc(a)} vs {_desc(b)}']
        if a.dtype.is_floating_point:
            d = float((a - b).abs().max()) if a.numel() else 0.0
            return [] if d <= atol else [f'{name}: max abs diff {d:.3g} > {atol}']
        return [] if torch.equal(a, b) else [f'{name}: integer/bool values differ']
    if isinstance(a, dict):
        if not isinstance(b, dict) or set(a) != set(b):
            sa, sb = set(a), set(b) if isinstance(b, dict) else set()
            return [f'{name}: keys differ: only old {sorted(sa - sb)[:5]}, '
                    f'only new {sorted(sb - sa)[:5]}']
        return [d for k in a for d in compare(f'{name}.{k}', a[k], b[k], atol)]
    if isinstance(a, (list, tuple)):
        if not isinstance(b, (list, tuple)) or len(a) != len(b):
            return [f'{name}: length {len(a)} vs {len(b) if hasattr(b, "__len__") else b}']
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in compare(f'{name}[{i}]', x, y,
                                                                          atol)]
    if isinstance(a, float) and isinstance(b, (int, float)):
        return [] if abs(a - b) <= atol * max(1.0, abs(a)) else [f'{name}: {a!r} vs {b!r}']
    if isinstance(a, str) and isinstance(b, str) and a.startswith('{'):
        try:  # a JSON log line: compare its values with the tolerance
            return compare(name, json.loads(a), json.loads(b), atol)
        except ValueError:
            pass
    return [] if a == b else [f'{name}: {a!r} vs {b!r}'[:300]]


def _desc(t):
    return f'{type(t).__name__}{tuple(t.shape)} {t.dtype}' if isinstance(t, torch.Tensor) else \
        type(t).__name__


def run(only: List[str], ref=None) -> Recorder:
    import mmsparse  # noqa: F401
    from mmengine.registry import init_default_scope
    import warnings
    warnings.filterwarnings('ignore')  # the pinned stack's deprecation noise
    init_default_scope('mmsparse')
    # one thread: reductions (and Adam's amplification of near-zero gradients) depend on the
    # thread count, so a recording is compared at the thread count it was made with
    torch.set_num_threads(1)
    rec = Recorder(ref)
    for name in only:
        SECTIONS[name](rec)
    return rec


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('mode', choices=['record', 'check'])
    parser.add_argument('file', help='the recording (.pt) to write or to check against')
    parser.add_argument('--only', nargs='+', choices=sorted(SECTIONS), default=list(SECTIONS))
    parser.add_argument('--atol', type=float, default=1e-6)
    args = parser.parse_args()
    if args.mode == 'record':
        rec = run(args.only)
        Path(args.file).parent.mkdir(parents=True, exist_ok=True)
        torch.save(dict(values=rec.values, states=rec.states, sections=args.only), args.file)
        print(f'recorded {len(rec.values)} values of {", ".join(args.only)} to {args.file}')
        return 0
    ref = torch.load(args.file, weights_only=False)  # our own recording
    only = [s for s in args.only if s in ref['sections']]
    rec = run(only, ref)
    bad = []
    for name, old in ref['values'].items():
        if name.split('/')[0] not in only:
            continue
        if name not in rec.values:
            bad.append(f'{name}: not produced')
            continue
        diffs = compare(name, old, rec.values[name], args.atol)
        print(f'{"ok  " if not diffs else "DIFF"} {name}')
        bad += diffs
    for d in bad:
        print('  ' + d)
    print(f'{len(bad)} differences in {len(ref["values"])} recorded values')
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
