"""Joint search of structure and keep ratios (``search_cfg.structures``) and keep-ratio search on
a compact (composed) DynamicViT: the genome -> model mapping, tools/search.py end to end on a few
Fashion-MNIST test images (window, kill + resume, 2 ranks under torchpack) and the bad inputs.

The models are two compact demo ViTs built here (width 96, 6 layers: 'wide' with 3 heads and 384
MLP neurons per layer, 'narrow' with 1 head and 96 neurons), each with a composed checkpoint of
``DynamicViTClassifier(compact_checkpoint=...)`` (random weights: scores test the tool, not the
method)."""
import contextlib
import importlib.util
import io
import json
import re
import sys
from itertools import product
from pathlib import Path

import pytest
import torch

from mmsparse.search import (StructureLatencyTable, joint_space, keep_ratio_space,
                             min_keep_ratio, read_log)
from tests.conftest import REPO, run_tool, tool_env

SEARCH_CONFIG = REPO / 'configs/compose/dynamicvit-compose_search_fashion-mnist.py'
DEMO_ARCH = dict(embed_dims=96, num_layers=6, num_heads=3, feedforward_channels=384)
# name -> (heads, MLP neurons) per layer
STRUCTURES = {'wide': (3, 384), 'narrow': (1, 96)}
# 32 test images, loaders in-process, 1 / 3 timing calls: a candidate costs ~0.1 s on a CPU
FAST = ['--batch-size', '4', '--warmup', '1', '--runs', '3', '--val-subset', '32',
        '--population-size', '4', '--parents', '2', '--iterations', '2', '--cfg-options',
        'test_dataloader.num_workers=0', 'test_dataloader.persistent_workers=False',
        'test_dataloader.batch_size=16']
LOG = 'search_max{:g}_min{:g}.jsonl'


def _classifier_cfg(**backbone) -> dict:
    return dict(
        type='ImageClassifier', _scope_='mmpretrain',
        backbone=dict(type='mmsparse.CompactVisionTransformer', arch=DEMO_ARCH, img_size=28,
                      patch_size=4, in_channels=1, out_type='cls_token', **backbone),
        head=dict(type='VisionTransformerClsHead', num_classes=10, in_channels=96))


def _build_checkpoints(folder: Path) -> dict:
    """name -> (compact checkpoint, composed checkpoint) for :data:`STRUCTURES`."""
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope

    import mmsparse  # noqa: F401  (registers the models)
    from mmsparse.models.layers.compact_vit import compact_structure
    from mmsparse.utils import build_model
    init_default_scope('mmsparse')
    folder.mkdir(parents=True, exist_ok=True)
    dvit = Config.fromfile(str(REPO / 'configs/dynamicvit/dynamicvit-vit-tiny-p4_fashion-mnist.py'))
    out = {}
    for seed, (name, (heads, mlp)) in enumerate(STRUCTURES.items()):
        torch.manual_seed(seed)
        compact = MODELS.build(_classifier_cfg(num_heads=heads, mlp_dims=mlp))
        compact.init_weights()
        # the head starts at 0 (mmpretrain's init): uniform scores would make every candidate tie
        torch.nn.init.normal_(compact.head.layers.head.weight, std=1.0)
        meta = dict(compact_structure=compact_structure(compact.backbone))
        compact_path = folder / f'{name}_compact.pth'
        torch.save(dict(meta=meta, state_dict=compact.state_dict()), compact_path)
        dvit.model.compact_checkpoint = str(compact_path)
        composed = build_model(dvit)  # as the tools build it (scopes of the data preprocessor)
        composed.init_weights()  # the compact weights, fresh predictors
        composed_path = folder / f'{name}_composed.pth'
        torch.save(dict(meta=meta, state_dict=composed.state_dict()), composed_path)
        out[name] = (compact_path, composed_path)
    return out


def _structures_text(ckpts: dict, names=('wide', 'narrow')) -> str:
    return 'search_cfg = dict(structures=[\n' + ''.join(
        f'    dict(name={n!r}, compact_checkpoint={str(ckpts[n][0])!r}, '
        f'checkpoint={str(ckpts[n][1])!r}),\n' for n in names) + '])\n'


@pytest.fixture(scope='module')
def joint(tmp_path_factory, data_root):
    """The checkpoints, a config searching both (the shipped search config with these entries)
    and a latency table measured once in-process, shared by the searches below."""
    folder = tmp_path_factory.mktemp('joint')
    ckpts = _build_checkpoints(folder / 'ckpts')
    config = folder / 'joint_search.py'
    config.write_text(f"_base_ = ['{SEARCH_CONFIG}']\n" + _structures_text(ckpts))
    return dict(folder=folder, ckpts=ckpts, config=config, table=folder / 'table.json')


@pytest.fixture(scope='module')
def joint_job(joint):
    """The library's search job on ``joint``'s config, built in this process (the Runner, both
    models, the candidate runner), and its latency table measured once into ``joint['table']``,
    which the tool runs below load (same settings: the table's meta matches)."""
    from mmsparse.search.run import SearchJob, SearchOptions
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('OMP_NUM_THREADS', '1')
        opts = SearchOptions(config=str(joint['config']), checkpoint='none', **_options(joint))
        opts.check()
        job = SearchJob(opts)
        job.load_config()
        job.build()
        job.table = job.latency_table()
    return job


def _options(joint, **kw) -> dict:
    """SearchOptions of the FAST flags (the library call)."""
    opts = dict(max_latency=1000.0, batch_size=4, warmup=1, runs=3, val_subset=32,
                population_size=4, parents=2, iterations=2, latency_source='table',
                latency_table=str(joint['table']), work_dir=str(joint['folder'] / 'lib'),
                cfg_options={'test_dataloader.num_workers': 0,
                             'test_dataloader.persistent_workers': False,
                             'test_dataloader.batch_size': 16})
    opts.update(kw)
    return opts


# ------------------------------------------------------------------ the space (pure)
def test_joint_space_decodes_a_structure_gene_and_sorted_keep_genes():
    space = joint_space(['wide', 'narrow'], keep_ratio_space(2, [1.0, 0.7, 0.5], num_patches=49))
    assert space.name == 'structure+keep_ratios' and space.attribute == 'keep_ratios'
    assert space.gene_names == ('structure', 'stage0', 'stage1')
    assert space.genome_space.choices == (2, 3, 3)
    assert space.genome_space.groups == ((1, 2), )  # the keep genes, shifted by the structure
    assert space.decode((1, 0, 2)) == {'structure': 'narrow', 'keep_ratios': [1.0, 0.5]}
    assert space.setting((0, 1, 1)) == (0, [0.7, 0.7])
    with pytest.raises(ValueError, match='invalid genome'):
        space.decode((0, 2, 1))  # keep ratios must not increase
    with pytest.raises(ValueError, match='invalid genome'):
        space.decode((2, 0, 0))  # no third structure
    # int(49 * r) >= 1: 1/49 = 0.0204..., rounded up at 4 decimals
    assert min_keep_ratio(49) == 0.0205 and int(49 * 0.0205) == 1 and int(49 * 0.0204) == 0
    assert min_keep_ratio(196) == 0.0052
    # one table per structure: gene 0 picks it, the rest is that table's genome
    from mmsparse.search import LatencyTable, table_from_dict
    table = StructureLatencyTable([LatencyTable(10.0, [[0.0, -2.0, -3.0]] * 2),
                                   LatencyTable(6.0, [[0.0, -1.0, -1.5]] * 2)])
    assert table.predict((0, 1, 2)) == 10.0 - 2.0 - 3.0
    assert table.predict((1, 1, 2)) == 6.0 - 1.0 - 1.5
    assert table_from_dict(json.loads(json.dumps(table.to_dict()))) == table


# ------------------------------------------------------------------ genome -> model
def test_genome_selects_the_entrys_model_and_sets_its_keep_ratios(joint, joint_job):
    """The candidate runner of a joint search holds one model per entry: the genome's gene 0
    picks the one that is evaluated and timed, its keep ratios the rest; its score is that
    model's accuracy computed here by hand."""
    job = joint_job
    cand, space = job.cand, job.space
    assert space.structures == ('wide', 'narrow') and len(cand.models) == 2
    assert cand.models[0] is job.runner.model  # entry 0 is the Runner's model
    wide, narrow = cand.models
    assert wide.backbone.layer_mlp_dims == [384] * 6 and wide.backbone.layer_num_heads == [3] * 6
    assert narrow.backbone.layer_mlp_dims == [96] * 6
    assert narrow.backbone.layer_num_heads == [1] * 6
    # each holds its composed checkpoint's weights, predictors included
    for model, name in ((wide, 'wide'), (narrow, 'narrow')):
        sd = torch.load(joint['ckpts'][name][1], map_location='cpu')['state_dict']
        for k, v in model.state_dict().items():
            if not k.startswith(('teacher.', 'data_preprocessor.')):
                assert torch.equal(v, sd[k]), (name, k)
    # default candidates 1.0, 0.9, ..., 0.3 (descending): choice 2 = 0.8, choice 5 = 0.5
    genome = (1, 2, 5)
    assert space.decode(genome) == {'structure': 'narrow', 'keep_ratios': [0.8, 0.5]}
    before = list(wide.backbone.keep_ratios)
    score = cand.score(genome)
    assert cand.active == 1 and narrow.backbone.keep_ratios == [0.8, 0.5]
    assert wide.backbone.keep_ratios == before  # the other structure untouched
    assert narrow.backbone.keep_counts() == [39, 24]  # int(49 * 0.8), int(49 * 0.5)
    # by hand: the narrow model's top-1 on the same 32 images
    correct = total = 0
    with torch.no_grad():
        for batch in cand.dataloader:
            for sample in narrow.val_step(batch):
                correct += int(sample.pred_label.item() == sample.gt_label.item())
                total += 1
    assert total == 32 and score == pytest.approx(100.0 * correct / total)
    # the timed call is the chosen model's backbone with those keep ratios
    calls = []
    hook = narrow.backbone.register_forward_hook(lambda m, i, o: calls.append(m.keep_ratios))
    cand.latency((1, 0, 1))
    hook.remove()
    assert calls and all(c == [1.0, 0.9] for c in calls)
    # a timed input of another size has its own patch grid, which the keep ratios must fit too
    from mmsparse.search import check_keep_candidates
    from mmsparse.search.host import timed_num_patches
    assert timed_num_patches(narrow.backbone, (12, 12), 1) == 9
    with pytest.raises(ValueError, match=r'keep ratio 0.1 keeps int\(9 \* 0.1\) = 0 of the 9 patch '
                       r'tokens of the timed input.*smallest allowed ratio is 0.1112'):
        check_keep_candidates([1.0, 0.1], 9, where=' of the timed input')
    # the latency table: one per structure (which is faster is for benchmarks, not tests)
    table = job.table
    assert isinstance(table, StructureLatencyTable) and len(table.tables) == 2
    assert joint['table'].is_file() and all(t.base > 0 for t in table.tables)


# ------------------------------------------------------------------ tools/search.py
def run_search(*args, **kw):
    kw.setdefault('env', tool_env(OMP_NUM_THREADS='1'))
    return run_tool('tools/search.py', *args, **kw)


def _ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def _window(table_path: Path) -> tuple:
    """A window holding the middle half of the table's predictions over every genome."""
    from mmsparse.search import table_from_dict
    table = table_from_dict(json.loads(table_path.read_text())['table'])
    preds = sorted(table.predict((s, a, b)) for s, a, b in product(range(2), range(8), range(8))
                   if a <= b)
    # an additive table measured on a busy machine can predict below 0 for the sparsest genomes
    low, high = max(preds[len(preds) // 4], 0.0), preds[3 * len(preds) // 4]
    if high <= low:
        high = preds[-1]
    return float(f'{low:.4f}'), float(f'{high:.4f}')


def test_joint_search_stays_in_its_window_and_resumes_exactly(joint, joint_job):
    """Latency from the measured-once tables: the search is deterministic, so a run stopped after
    3 candidates (plus a half-written line) and resumed equals the full run; a resume under a
    changed structures list refuses."""
    low, high = _window(joint['table'])
    common = [joint['config'], 'none', '--max-latency', high, '--min-latency', low,
              '--latency-source', 'table', '--latency-table', joint['table'], *FAST]
    full, cut = joint['folder'] / 'full', joint['folder'] / 'cut'
    out = _ok(run_search(*common, '--work-dir', full))
    assert 'latency table: reusing' in out
    tag = f'max{high:g}_min{low:g}'
    ref = json.loads((full / f'search_{tag}_best.json').read_text())
    best = ref['best']
    assert low <= best['latency_ms'] <= high and best['feasible']
    assert best['config']['structure'] in STRUCTURES
    assert ref['structure']['name'] == best['config']['structure']
    header, cands, _ = read_log(str(full / LOG.format(high, low)))
    assert [e['name'] for e in header['structures']] == ['wide', 'narrow']
    assert header['genes'] == ['structure', 'stage0', 'stage1']
    assert any(not c.feasible for c in cands)  # the window does exclude candidates
    assert all(c.feasible == (low <= c.latency_ms <= high) for c in cands)
    # log lines name the entry
    assert re.search(r'#0 random g0 structure=(wide|narrow) keep_ratios=\[', out)
    assert re.search(r'iteration 2/2 .*structure=(wide|narrow) keep_ratios=', out)

    # the fine-tuning config: the chosen entry's structure and weights, the keep ratios
    from mmengine.config import Config
    cfg = Config.fromfile(str(full / f'search_best_joint_search_{tag}.py'))
    compact, composed = joint['ckpts'][best['config']['structure']]
    assert cfg.model.compact_checkpoint == str(compact)
    assert cfg.load_from == str(composed)
    assert cfg.model.backbone.keep_ratios == best['config']['keep_ratios']

    # killed after 3 candidates, mid-line
    out = _ok(run_search(*common, '--work-dir', cut, '--max-evaluations', 3))
    assert 'search stopped' in out
    with open(cut / LOG.format(high, low), 'a') as f:
        f.write('{"type": "candidate", "config": {"structure": "wi')
    out = _ok(run_search(*common, '--work-dir', cut))
    assert 'resuming: 3 candidates' in out
    res = json.loads((cut / f'search_{tag}_best.json').read_text())
    assert res['best'] == ref['best'] and res['structure'] == ref['structure']
    assert [h['best_key'] for h in res['history']] == [h['best_key'] for h in ref['history']]
    a, b = read_log(str(full / LOG.format(high, low))), read_log(str(cut / LOG.format(high, low)))
    assert [c.to_dict() for c in a[1]] == [c.to_dict() for c in b[1]] and b[2] == 0

    # the same search under another structures list (the entries swapped) refuses the log
    config, text = joint['config'], joint['config'].read_text()
    config.write_text(f"_base_ = ['{SEARCH_CONFIG}']\n"
                      + _structures_text(joint['ckpts'], ('narrow', 'wide')))
    try:
        proc = run_search(*common, '--work-dir', cut)
    finally:
        config.write_text(text)
    one_error_line(proc, "written with a different 'structures' (search_cfg.structures)",
                   "'name': 'narrow'", '--work-dir')


def test_two_ranks_torchpack_search_and_resume(joint, tmp_path):
    """2 ranks (MPI launch through torchpack): stopped after 3 candidates, then resumed; both
    ranks report the same best entry and keep ratios."""
    env = tool_env(MASTER_PORT='29549', OMP_NUM_THREADS='1')
    args = ['tools/search.py', joint['config'], 'none', '--max-latency', 1000,
            '--latency-source', 'table', '--latency-table', tmp_path / 'table2.json',
            '--launcher', 'mpi', '--work-dir', tmp_path, *FAST]
    prefix = ('torchpack', 'dist-run', '-v', '-np', '2')
    out = _ok(run_tool(*args, '--max-evaluations', 3, env=env, launcher_prefix=prefix,
                       timeout=300))
    assert 'search stopped' in out
    out = _ok(run_tool(*args, env=env, launcher_prefix=prefix, timeout=300))
    assert 'resuming: 3 candidates' in out
    best = dict(re.findall(r'search best \(rank (\d)/2\): (.*? key [0-9a-f]{16})', out))
    assert set(best) == {'0', '1'} and best['0'] == best['1'], out[-3000:]
    assert 'structure+keep_ratios={"structure": ' in best['0']
    rep = json.loads((tmp_path / 'search_max1000_min0_best.json').read_text())
    assert rep['world_size'] == 2 and rep['resumed_from'] == 3
    assert rep['structure']['name'] == rep['best']['config']['structure']


def test_keep_ratio_search_on_a_compact_model_as_on_a_dense_one(joint, tmp_path):
    """A composed DynamicViT (model.compact_checkpoint, CHECKPOINT its composed weights) is a
    DynamicVisionTransformer: the same keep-ratio search; a candidate set that could leave a
    stage without a token is refused at the start, naming search_cfg.candidates."""
    compact, composed = joint['ckpts']['narrow']
    config = tmp_path / 'compact.py'
    base = REPO / 'configs/compose/dynamicvit-uvc-vit-tiny-p4_budget0.5_fashion-mnist.py'
    config.write_text(f"_base_ = ['{base}']\nmodel = dict(compact_checkpoint={str(compact)!r})\n")
    out = _ok(run_search(config, composed, '--max-latency', 1000, '--latency-source', 'table',
                         '--work-dir', tmp_path / 'w', *FAST, '--iterations', '1'))
    assert 'keep_ratios: 2 genes' in out
    rep = json.loads((tmp_path / 'w/search_max1000_min0_best.json').read_text())
    assert rep['structure'] is None and len(rep['best']['config']) == 2
    from mmengine.config import Config
    cfg = Config.fromfile(str(next((tmp_path / 'w').glob('search_best_*.py'))))
    assert cfg.model.backbone.keep_ratios == rep['best']['config']
    assert cfg.model.compact_checkpoint == str(compact) and cfg.load_from == str(composed)
    # int(49 * 0.02) = 0 tokens: refused before any candidate, not when first drawn
    proc = run_search(config, composed, '--max-latency', 1000, '--candidates', 1.0, 0.5, 0.02,
                      '--work-dir', tmp_path / 'zero', *FAST)
    line = one_error_line(proc, 'search_cfg.candidates: keep ratio 0.02',
                          'smallest allowed ratio is 0.0205')
    assert 'int(49 * 0.02) = 0' in line
    assert not (tmp_path / 'zero' / 'search_max1000_min0.jsonl').exists()


# ------------------------------------------------------------------ bad input
def one_error_line(proc, *needles) -> str:
    # the error is one line, the last; a library may have warned before it (mmpretrain's MNIST)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    err = proc.stderr.strip().splitlines()
    assert err[-1].startswith('error: ') and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    assert sum(line.startswith('error: ') for line in err) == 1
    for needle in needles:
        assert needle in err[-1], err[-1]
    return err[-1]


class _Proc:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def _search_in_process(*args) -> _Proc:
    """tools/search.py's main under run_cli, in this process: its exit status and output (for
    the errors raised before a Runner is built, which need no fresh interpreter)."""
    spec = importlib.util.spec_from_file_location('search_tool', REPO / 'tools/search.py')
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    from mmsparse.utils import run_cli
    out, err = io.StringIO(), io.StringIO()
    argv = ['tools/search.py', *map(str, args)]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, 'argv', argv)
        try:
            run_cli(tool.main)
            code = 0
        except SystemExit as e:
            code = e.code
    return _Proc(code, out.getvalue(), err.getvalue())


def test_bad_structures_fail_at_start_naming_the_key(joint, tmp_path):
    ckpts = joint['ckpts']
    (wide_c, wide_w), (narrow_c, narrow_w) = ckpts['wide'], ckpts['narrow']

    def config(text: str, base: Path = SEARCH_CONFIG) -> Path:
        path = tmp_path / f'c{len(list(tmp_path.iterdir()))}.py'
        path.write_text(f"_base_ = ['{base}']\n{text}")
        return path

    def entries(*items) -> str:
        return 'search_cfg = dict(structures=[' + ', '.join(
            f'dict(name={n!r}, compact_checkpoint={str(c) if c else None!r}, '
            f'checkpoint={str(w)!r})' for n, c, w in items) + '])\n'

    flags = ['--max-latency', 1000, '--work-dir', tmp_path / 'w']
    missing = tmp_path / 'nope.pth'
    cases = [
        (entries(('wide', wide_c, wide_w), ('narrow', narrow_c, missing)),
         [f"search_cfg.structures[1].checkpoint: '{missing}' not found"]),
        (entries(('wide', missing, wide_w)),
         [f"search_cfg.structures[0].compact_checkpoint: '{missing}' not found"]),
        (entries(('wide', wide_c, wide_w), ('wide', narrow_c, narrow_w)),
         ["search_cfg.structures[1].name: 'wide' duplicates search_cfg.structures[0].name"]),
        (entries(('wide', wide_c, wide_w)).replace("name='wide', ", ''),
         ['search_cfg.structures[0].name: is missing']),
        # a backbone that is not a DynamicVisionTransformer
        (entries(('wide', wide_c, wide_w)),
         ['search_cfg.structures: chooses among composed DynamicViT models',
          "model.type='ImageClassifier'"]),
    ]
    for i, (text, needles) in enumerate(cases):
        base = REPO / 'configs/vit/vit-tiny-p4_fashion-mnist.py' if i == 4 else SEARCH_CONFIG
        one_error_line(_search_in_process(config(text, base), 'none', *flags), *needles)
    # a CHECKPOINT besides the entries' own
    one_error_line(_search_in_process(config(entries(('wide', wide_c, wide_w))), wide_w,
                                      *flags),
                   f'CHECKPOINT {wide_w}: with search_cfg.structures every entry names its own '
                   f'checkpoint; pass none')
    # the shipped config's window (search_cfg.max_latency) replaces --max-latency; an empty one
    # is refused naming where it came from
    one_error_line(_search_in_process(
        config('search_cfg = dict(max_latency=1.0, min_latency=2.0)\n'), 'none',
        '--work-dir', tmp_path / 'w'),
        '--min-latency 2 is above --max-latency 1 (from search_cfg.max_latency / '
        'search_cfg.min_latency)')
    assert not (tmp_path / 'w').exists()  # nothing was written
