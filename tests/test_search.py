"""Latency-constrained evolutionary search: the pure searcher against hand-checkable cases, resume
from a truncated log, the latency table, and tools/search.py end to end (one process and 2 ranks
under torchpack)."""
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from itertools import product
from pathlib import Path

import numpy as np
import pytest

from mmsparse.search import (Candidate, EvaluationBudgetReached, EvolutionSearch, GenomeSpace,
                             NoFeasibleCandidateError, SearchLogLock, SearchLogWriter,
                             SearchSettings,
                             SearchSettingsError, build_latency_table, candidate_key,
                             keep_ratio_space, prediction_errors, probe_genomes, rank_candidates,
                             read_log, space_for_backbone, window_ratio_space)
from tests.conftest import DEMO_CONFIG, REPO, run_tool, tool_env

SWIN_T = (2, 2, 6, 2)
CANDS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
DYNAMICVIT = REPO / 'configs/dynamicvit/dynamicvit-vit-tiny-p4_fashion-mnist.py'
SEARCH_VOC = REPO / 'configs/sparsevit/mask-rcnn_sparsevit-swin-t_search_voc-sample.py'


# ------------------------------------------------------------------ spaces and operators
def test_window_space_encodes_swin_t_like_sparsevit():
    space = window_ratio_space(SWIN_T, CANDS)
    assert space.gene_names == ('stage0', 'stage1', 'stage2_1', 'stage2_2', 'stage2_3', 'stage3')
    assert space.genome_space.choices == (9, ) * 6
    assert space.genome_space.groups == ((2, 3, 4), )
    # the paper's cfg3 is one genome of this space
    from mmsparse.models.sparsevit import PAPER_WINDOW_RATIOS, normalize_window_ratios
    cfg3 = space.decode((7, 0, 2, 4, 5, 0))
    assert cfg3 == [[0.7, 0.7], [0.0, 0.0], [0.2, 0.2, 0.4, 0.4, 0.5, 0.5], [0.0, 0.0]]
    assert normalize_window_ratios(cfg3, SWIN_T) == normalize_window_ratios(
        PAPER_WINDOW_RATIOS['cfg3'], SWIN_T)
    with pytest.raises(ValueError, match='invalid genome'):
        space.decode((0, 0, 5, 4, 3, 0))  # stage-2 triple not sorted
    with pytest.raises(SearchSettingsError, match='search_cfg.candidates'):
        window_ratio_space(SWIN_T, [0.0, 1.0])


def test_keep_space_is_non_increasing_and_dispatch_by_backbone_class():
    space = keep_ratio_space(3, [0.5, 1.0, 0.7])
    assert space.candidates == (1.0, 0.7, 0.5)
    assert space.decode((0, 1, 2)) == [1.0, 0.7, 0.5]
    assert space.genome_space.groups == ((0, 1, 2), )

    class SparseSwinTransformer:  # dispatch is by class name (and base classes)
        depths = SWIN_T

    class MySwin(SparseSwinTransformer):
        pass

    class DynamicVisionTransformer:
        pruning_loc = [1, 3, 5]

    assert space_for_backbone(MySwin(), CANDS, 2).name == 'window_ratios'
    assert space_for_backbone(DynamicVisionTransformer()).candidates[0] == 1.0
    with pytest.raises(SearchSettingsError, match='model.backbone.type: object'):
        space_for_backbone(object())


def test_mutation_keeps_the_stage2_triple_sorted():
    gs = window_ratio_space(SWIN_T, CANDS).genome_space
    rng = np.random.default_rng(0)
    parent = (3, 1, 2, 4, 8, 0)
    assert gs.mutate(parent, rng, 0.0) == parent
    changed = 0
    for _ in range(300):
        child = gs.mutate(parent, rng, 1.0)
        assert gs.is_valid(child) and child[2] <= child[3] <= child[4]
        changed += child != parent
    assert changed > 290
    # p = 0.1: on average 0.6 of 6 genes resampled
    diffs = [sum(a != b for a, b in zip(gs.mutate(parent, rng, 0.1), parent)) for _ in range(2000)]
    assert 0.3 < np.mean(diffs) < 0.7


def test_crossover_takes_each_gene_from_a_parent():
    free = GenomeSpace(choices=(9, ) * 6)
    rng = np.random.default_rng(1)
    a, b = (0, 1, 2, 3, 4, 5), (8, 7, 6, 5, 4, 3)
    for _ in range(100):
        child = free.crossover(a, b, rng)
        assert all(c in (x, y) for c, x, y in zip(child, a, b))
    gs = window_ratio_space(SWIN_T, CANDS).genome_space
    a, b = (1, 2, 0, 5, 5, 0), (6, 0, 1, 1, 8, 3)
    for _ in range(100):
        child = gs.crossover(a, b, rng)
        assert gs.is_valid(child)
        assert all(child[g] in (a[g], b[g]) for g in (0, 1, 5))
        # the triple is a sorted pick of one parent's value per position
        picks = {tuple(sorted(p)) for p in product(*[(a[g], b[g]) for g in (2, 3, 4)])}
        assert tuple(child[2:5]) in picks


def test_settings_validation_names_the_key():
    s = SearchSettings.from_dict(None)
    assert (s.population_size, s.parents, s.mutation_prob) == (100, 25, 0.1)
    for cfg, msg in [(dict(parents=30, population_size=10), 'search_cfg.parents'),
                     (dict(mutation_prob=1.5), 'search_cfg.mutation_prob'),
                     (dict(population_size=0), 'search_cfg.population_size'),
                     (dict(iterations=2.5), 'search_cfg.iterations'),
                     (dict(populaton_size=4), 'search_cfg.populaton_size: unknown')]:
        with pytest.raises(SearchSettingsError, match=msg):
            SearchSettings.from_dict(cfg)
    assert SearchSettings.from_dict(dict(candidates=[0.1]), ignore=('candidates', )).parents == 25


def test_candidate_key_is_sha256_of_canonical_json():
    assert candidate_key({'b': [0.1, 0.2], 'a': 1}) == candidate_key({'a': 1, 'b': [0.1, 0.2]})
    assert len(candidate_key([[0.0]])) == 64
    assert candidate_key([[0.1]]) != candidate_key([[0.2]])


# ------------------------------------------------------------------ the search loop
class Fake:
    """Deterministic latency (additive per gene) and score (prefers sparsity in stage 0)."""

    def __init__(self, space):
        self.space = space
        self.latency_calls, self.score_calls = [], []

    def latency(self, genome):
        self.latency_calls.append(tuple(genome))
        return 100.0 - sum(genome) - 0.5 * genome[0]

    def score(self, genome):
        self.score_calls.append(tuple(genome))
        return float(genome[0] * 10 - sum(genome[2:5]) + 0.1 * genome[5])


def _search(fake, settings, **kw):
    space = fake.space
    return EvolutionSearch(space.genome_space, settings, decode=space.decode,
                           latency_fn=fake.latency, score_fn=fake.score,
                           **dict(dict(min_latency=60.0, max_latency=80.0), **kw))


SMALL = SearchSettings(population_size=8, parents=3, mutation_prob=0.2, iterations=6, seed=3)


def test_search_sizes_caching_feasibility_and_monotone_best():
    fake = Fake(window_ratio_space(SWIN_T, CANDS))
    history = []
    search = _search(fake, SMALL, on_iteration=history.append)
    result = search.run()
    cands = list(search.cache.values())
    # every candidate measured once (duplicates come from the cache), only feasible ones scored
    assert len(fake.latency_calls) == len(set(fake.latency_calls)) == len(cands)
    assert set(fake.score_calls) == {tuple(c.genome) for c in cands if c.feasible}
    assert all((c.score is None) != c.feasible for c in cands)
    assert all(c.feasible == (60 <= c.latency_ms <= 80) for c in cands)
    assert result.cache_hits > 0 and result.trials == result.cache_hits + result.evaluated
    assert [h['generation'] for h in history] == list(range(SMALL.iterations + 1))
    assert all(h['population'] <= SMALL.population_size for h in history)
    assert history[0]['population'] == SMALL.population_size  # random phase filled
    scores = [h['best_score'] for h in history]
    assert scores == sorted(scores)  # best so far never gets worse
    assert result.best.key == rank_candidates(cands)[0].key == history[-1]['best_key']
    assert [c.phase for c in cands[:8]] == ['random'] * 8
    assert {'mutation', 'crossover'} <= {c.phase for c in cands}
    # seeded: the same run again gives the same candidates in the same order
    again = _search(Fake(fake.space), SMALL)
    again.run()
    assert [c.key for c in again.cache.values()] == [c.key for c in cands]
    other = _search(Fake(fake.space), SearchSettings(**dict(SMALL.to_dict(), seed=4)))
    other.run()
    assert [c.key for c in other.cache.values()] != [c.key for c in cands]


def test_resume_from_a_truncated_log_equals_the_uninterrupted_run(tmp_path):
    space = window_ratio_space(SWIN_T, CANDS)
    full = _search(Fake(space), SMALL)
    ref = full.run()
    ref_keys = [c.key for c in full.cache.values()]

    log = tmp_path / 'search.jsonl'
    writer = SearchLogWriter(str(log))
    writer.header(dict(window=[60, 80]))
    cut = _search(Fake(space), SMALL, on_candidate=writer.candidate, max_evaluations=11)
    with pytest.raises(EvaluationBudgetReached, match='after 11 new evaluations'):
        cut.run()
    with open(log, 'a') as f:
        f.write('{"type": "candidate", "key": "abc')  # killed in the middle of a write
    header, cands, dropped = read_log(str(log))
    assert header['window'] == [60, 80] and len(cands) == 11 and dropped == 1

    fake = Fake(space)
    writer = SearchLogWriter(str(log))  # drops the partial line
    resumed = _search(fake, SMALL, cache={c.key: c for c in cands},
                      on_candidate=writer.candidate)
    res = resumed.run()
    # nothing in the log is measured or evaluated again
    done = {tuple(c.genome) for c in cands}
    assert not done & set(fake.latency_calls) and not done & set(fake.score_calls)
    assert res.evaluated == len(ref_keys) - 11
    assert res.best.key == ref.best.key and res.best.score == ref.best.score
    assert [h['best_key'] for h in res.history] == [h['best_key'] for h in ref.history]
    _, logged, dropped = read_log(str(log))
    assert dropped == 0 and [c.key for c in logged] == ref_keys
    assert [c.index for c in logged] == list(range(len(ref_keys)))


def test_no_feasible_candidate_names_the_latency_range():
    fake = Fake(window_ratio_space(SWIN_T, CANDS))
    search = _search(fake, SearchSettings(population_size=4, parents=2, max_random_trials=5),
                     min_latency=1.0, max_latency=2.0)
    with pytest.raises(NoFeasibleCandidateError, match=r'\[1, 2\] ms; measured latencies ranged '
                       r'over \[\d+\.\d+, \d+\.\d+\] ms'):
        search.run()
    assert not fake.score_calls and len(fake.latency_calls) <= 5
    # the defaults (max_draws=10000, no phase limit) give up after 20 x population_size
    fake = Fake(window_ratio_space(SWIN_T, CANDS))
    search = _search(fake, SearchSettings(population_size=4, parents=2),
                     min_latency=1.0, max_latency=2.0)
    with pytest.raises(NoFeasibleCandidateError, match=r'random phase \(80 draws\)'):
        search.run()
    assert not fake.score_calls and len(fake.latency_calls) <= 80


class _Scripted:
    """A stand-in random stream that returns the given uniform draws in order."""

    def __init__(self, *draws):
        self.draws = [np.asarray(d, dtype=float) for d in draws]

    def random(self, n):
        out = self.draws.pop(0)
        assert out.shape == (n, )
        return out


def test_mutation_takes_genes_of_a_fresh_sorted_sample_by_position():
    gs = window_ratio_space(SWIN_T, CANDS).genome_space
    parent = (3, 1, 5, 6, 8, 0)
    flips = [0.9, 0.9, 0.05, 0.9, 0.9, 0.9]  # only gene 2 (the triple's first) is replaced
    fresh = (np.array([0, 0, 7, 1, 4, 0]) + 0.5) / 9  # a draw of 0, 0, 7, 1, 4, 0
    # SparseViT's _mutate: the fresh sample's triple sorted first, (1, 4, 7); position 0 -> 1
    child = gs.mutate(parent, _Scripted(flips, fresh), 0.1, 'sample')
    assert child == (3, 1, 1, 6, 8, 0)
    # 'gene': gene 2 takes its own draw, 7, then the triple (7, 6, 8) is sorted
    assert gs.mutate(parent, _Scripted(flips, fresh), 0.1, 'gene') == (3, 1, 6, 7, 8, 0)
    # p = 1 with 'sample' is a fresh draw of the space: the same genome as space.random
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    rng_b.random(gs.num_genes)
    assert gs.mutate(parent, rng_a, 1.0) == gs.random(rng_b)
    # so a replaced low position of a sorted triple tends to get a low value: the triple's first
    # gene, replaced alone in (8, 8, 8), is the minimum of 3 uniform draws (mean 1296 / 729 =
    # 1.78) with 'sample', one uniform draw (mean 4) with 'gene'
    rng = np.random.default_rng(0)
    for mode, mean in (('sample', 1296 / 729), ('gene', 4.0)):
        got = [gs.mutate((8, ) * 6, _Scripted(flips, rng.random(6)), 0.1, mode)[2]
               for _ in range(2000)]
        assert abs(np.mean(got) - mean) < 0.25, mode


def _cand(key, score, latency=70.0, feasible=True):
    return Candidate(key=key, genome=[0], config=key, feasible=feasible, latency_ms=latency,
                     score=score)


def test_parent_selection_on_hand_made_populations():
    space = window_ratio_space(SWIN_T, CANDS)
    old = [_cand('p1', 9.0), _cand('p2', 8.0)]
    # the generation just drawn, in draw order: c is drawn twice, d and e tie
    pop = [_cand('a', 1.0), _cand('c', 5.0), _cand('d', 3.0), _cand('c', 5.0), _cand('e', 3.0)]

    def select(selection, parents=3):
        settings = SearchSettings(population_size=5, parents=parents, selection=selection)
        return [c.key for c in _search(Fake(space), settings).select_parents(old, pop)]

    # SparseViT: the best of the generation only (the better old parents are gone), repeats
    # count as often as drawn, ties in draw order
    assert select('population') == ['c', 'c', 'd']
    assert select('population', parents=4) == ['c', 'c', 'd', 'e']
    # elitist: the best distinct candidates among the old parents and the generation
    assert select('elitist') == ['p1', 'p2', 'c']
    # a generation without a feasible draw keeps the parents
    search = _search(Fake(space), SearchSettings(population_size=5, parents=3))
    assert search.select_parents(old, []) == old


def test_population_holds_repeats_and_crossover_takes_two_different_parents():
    space = keep_ratio_space(1, [1.0, 0.5])  # two genomes in all
    for selection, size in (('population', 4), ('elitist', 2)):
        fake = Fake(space)
        fake.latency, fake.score = (lambda g: 70.0), (lambda g: float(g[0]))
        history = []
        _search(fake, SearchSettings(population_size=4, parents=2, iterations=2,
                                     max_random_trials=50, max_trials_per_iteration=50,
                                     selection=selection),
                on_iteration=history.append).run()
        # SparseViT appends every feasible draw to the population, repeats (cache hits) included
        assert [h['population'] for h in history] == [size] * 3, selection
    search = _search(Fake(space), SearchSettings(population_size=4, parents=3))
    parents = [_cand('x', 3.0), _cand('y', 2.0), _cand('z', 1.0)]
    for _ in range(200):
        a, b = search._pair(parents)
        assert a is not b
    assert search._pair(parents[:1]) == (parents[0], parents[0])


def test_the_budget_is_draws_and_a_longer_one_replays_the_shorter():
    space = window_ratio_space(SWIN_T, CANDS)
    settings = SearchSettings(population_size=8, parents=3, mutation_prob=0.2, max_draws=60,
                              seed=3)
    short = _search(Fake(space), settings)
    res = short.run()
    # 60 draws in all (random phase, infeasible draws and repeats included), then it stops
    assert res.trials == 60 == res.evaluated + res.cache_hits
    assert res.best.key == rank_candidates(list(short.cache.values()))[0].key
    assert len(res.history) >= 2 and res.history[-1]['trials'] == 60
    # a rerun with a larger budget and the first run's results: the same draws first, nothing
    # assessed again, the same search as one run with that budget
    more = SearchSettings(**dict(settings.to_dict(), max_draws=150))
    fake = Fake(space)
    longer = _search(fake, more, cache=dict(short.cache))
    res2 = longer.run()
    assert res2.trials == 150 and res2.evaluated == len(longer.cache) - len(short.cache)
    assert not {tuple(c.genome) for c in short.cache.values()} & set(fake.latency_calls)
    full = _search(Fake(space), more)
    ref = full.run()
    assert list(longer.cache) == list(full.cache) and res2.best.key == ref.best.key
    assert [h['best_key'] for h in res2.history] == [h['best_key'] for h in ref.history]
    # iterations and max_draws: whichever comes first
    capped = _search(Fake(space), SearchSettings(**dict(settings.to_dict(), max_draws=10000,
                                                        iterations=2))).run()
    assert [h['generation'] for h in capped.history] == [0, 1, 2] and capped.trials < 10000


def test_default_settings_are_sparsevits_searcher():
    s = SearchSettings.from_dict(None)
    assert (s.population_size, s.parents, s.mutation_prob, s.max_draws, s.iterations) == \
        (100, 25, 0.1, 10000, None)
    assert (s.selection, s.mutation, s.num_mutations) == ('population', 'sample', 50)
    assert s.random_trials is None and s.trials_per_iteration is None  # only max_draws limits
    for cfg, msg in [(dict(selection='best'), r"search_cfg.selection must be one of "
                      r"'population', 'elitist', got 'best'"),
                     (dict(mutation='uniform'), 'search_cfg.mutation must be one of'),
                     (dict(max_draws=0), 'search_cfg.max_draws'),
                     (dict(max_draws=None), 'search_cfg.max_draws and search_cfg.iterations '
                      'are both None: the search would never end')]:
        with pytest.raises(SearchSettingsError, match=msg):
            SearchSettings.from_dict(cfg)
    unbounded = SearchSettings.from_dict(dict(max_draws=None, iterations=3))
    assert unbounded.max_draws is None and unbounded.random_trials == 2000


# ------------------------------------------------------------------ latency table
def test_latency_table_is_exact_for_additive_costs_and_skips_far_candidates():
    space = window_ratio_space(SWIN_T, CANDS)
    gs = space.genome_space
    probes = probe_genomes(gs)
    assert len(probes) == 1 + 6 * 8 and all(gs.is_valid(p) for p in probes)
    weights = [5.0, 3.0, 2.0, 2.5, 3.5, 1.0]

    def additive(g):
        return 100.0 - sum(w * v for w, v in zip(weights, g))

    table = build_latency_table(gs, {p: additive(p) for p in probes})
    rng = np.random.default_rng(0)
    for _ in range(50):
        g = gs.random(rng)
        assert table.predict(g) == pytest.approx(additive(g))
    # a per-stage overhead (paid once if any gene of stage 2 is > 0, like the activation scores)
    # is exact too: in a sorted group the probes telescope it onto the last gene ...
    def overhead(g):
        return additive(g) + (4.0 if any(g[2:5]) else 0.0)

    table = build_latency_table(gs, {p: overhead(p) for p in probes})
    for _ in range(50):
        g = gs.random(rng)
        assert table.predict(g) == pytest.approx(overhead(g))

    # ... an interaction between stages is not
    def interaction(g):
        return additive(g) + (2.0 if g[0] and g[5] else 0.0)

    table = build_latency_table(gs, {p: interaction(p) for p in probes})
    assert table.predict((1, 0, 0, 0, 0, 1)) == pytest.approx(interaction((1, 0, 0, 0, 0, 1)) - 2)
    err = prediction_errors([(110.0, 100.0), (95.0, 100.0)])
    assert err == dict(n=2, mean_rel_error=pytest.approx(0.075), max_rel_error=pytest.approx(0.1),
                       mean_signed_rel_error=pytest.approx(0.025))
    assert prediction_errors([]) is None

    fake = Fake(space)
    search = _search(fake, SMALL, predict_fn=lambda g: 100.0 - sum(g) - 0.5 * g[0],
                     table_margin=0.05, min_latency=70.0, max_latency=75.0)
    search.run()
    skipped = [c for c in search.cache.values() if c.skipped]
    assert skipped and all(c.latency_ms is None and not c.feasible for c in skipped)
    assert all(not 66.5 <= c.predicted_ms <= 78.75 for c in skipped)
    assert not {tuple(c.genome) for c in skipped} & set(fake.latency_calls)


# ------------------------------------------------------------------ tools/search.py
def _one_error_line(proc, *needles):
    # the error is one line, the last; a library may have warned before it (mmpretrain's MNIST)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    err = proc.stderr.strip().splitlines()
    assert err[-1].startswith('error: ') and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    assert sum(line.startswith('error: ') for line in err) == 1
    for needle in needles:
        assert needle in err[-1], err[-1]


def run_search(*args, **kw):
    # one thread per process: the machine may be shared, and 2 ranks share 2 cores
    kw.setdefault('env', tool_env(OMP_NUM_THREADS='1'))
    return run_tool('tools/search.py', *args, **kw)


# the DynamicViT Fashion-MNIST config on 64 test images, loaders in-process (2 CPU cores)
FAST = ['--batch-size', '4', '--warmup', '1', '--runs', '3', '--val-subset', '64',
        '--population-size', '4', '--parents', '2', '--iterations', '2', '--cfg-options',
        'test_dataloader.num_workers=0', 'test_dataloader.persistent_workers=False']


def test_cli_bad_input(tmp_path, data_root):
    _one_error_line(run_search(DYNAMICVIT, 'none', '--max-latency', 10, '--min-latency',
                             20), '--min-latency 20 is above --max-latency 10')
    _one_error_line(run_search(DYNAMICVIT, 'none', '--max-latency', 10, '--population-size',
                             2, '--parents', 3), 'search_cfg.parents (3)')
    no_eval = tmp_path / 'no_eval.py'
    no_eval.write_text(f"_base_ = ['{DEMO_CONFIG}']\nval_dataloader = None\nval_cfg = None\n"
                       f"val_evaluator = None\ntest_dataloader = None\ntest_cfg = None\n"
                       f"test_evaluator = None\n")
    _one_error_line(run_search(no_eval, 'none', '--max-latency', 10),
                    'no val_dataloader / val_evaluator', 'nor test')
    _one_error_line(run_search(DYNAMICVIT, 'none', '--max-latency', 10, '--eval-split',
                             'val'), 'no val_dataloader', '--eval-split test')
    # --launcher mpi: without MPI (mpi4py not importable) and without an MPI launch
    shim = tmp_path / 'shim' / 'mpi4py'
    shim.mkdir(parents=True)
    (shim / '__init__.py').write_text("raise ImportError('no libmpi.so.40')\n")
    env = tool_env(PYTHONPATH=str(shim.parent), OMP_NUM_THREADS='1')
    _one_error_line(run_search(DYNAMICVIT, 'none', '--max-latency', 10, '--launcher', 'mpi',
                             env=env), '--launcher mpi needs MPI', 'mpi4py')
    _one_error_line(run_search(DYNAMICVIT, 'none', '--max-latency', 10, '--launcher',
                             'mpi'), 'not started by an MPI launcher')
    # a window no candidate reaches: said after the random phase, with the latencies seen
    _one_error_line(run_search(DYNAMICVIT, 'none', '--max-latency', 0.001, '--work-dir',
                             tmp_path / 'w', *FAST, 'search_cfg.max_random_trials=3'),
                    'no candidate of the random phase (3 draws)', '[0, 0.001] ms',
                    'measured latencies ranged over')


def test_search_tool_resumes_exactly_and_writes_a_finetune_config(tmp_path, data_root):
    """Latency from a shared, measured-once table: the whole search is deterministic, so a run
    stopped after 3 candidates (plus a half-written line) and resumed must equal the full run."""
    table = tmp_path / 'table.json'
    common = [DYNAMICVIT, 'none', '--max-latency', 1000, '--min-latency', 0,
              '--latency-source', 'table', '--latency-table', table]
    full, cut = tmp_path / 'full', tmp_path / 'cut'
    proc = run_search(*common, '--work-dir', full, *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert table.is_file() and 'latency table ready' in proc.stdout + proc.stderr
    log_name = 'search_max1000_min0.jsonl'
    ref = json.loads((full / 'search_max1000_min0_best.json').read_text())
    assert ref['best_is_best_in_log'] and ref['split'] == 'test'
    assert ref['metric'] == 'accuracy/top1' and len(ref['history']) == 3
    out = proc.stdout + proc.stderr
    assert out.count('[search] iteration') == 3 and 'test set (test_dataloader' in out

    proc = run_search(*common, '--work-dir', cut, '--max-evaluations', 3, *FAST)
    assert proc.returncode == 0 and 'search stopped' in proc.stdout, proc.stderr[-3000:]
    with open(cut / log_name, 'a') as f:
        f.write('{"type": "candidate", "config": [1.0, ')
    proc = run_search(*common, '--work-dir', cut, *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'resuming: 3 candidates' in proc.stdout + proc.stderr
    res = json.loads((cut / 'search_max1000_min0_best.json').read_text())
    assert res['resumed_from'] == 3 and res['evaluated_this_run'] == \
        ref['candidates_in_log'] - 3
    assert res['best'] == ref['best']

    def trajectory(rep):  # the counters of new / cached differ, by design
        return [{k: h[k] for k in ('generation', 'best_key', 'best_score', 'best_latency_ms',
                                   'population', 'trials')} for h in rep['history']]

    assert trajectory(res) == trajectory(ref)
    a, b = read_log(str(full / log_name)), read_log(str(cut / log_name))
    assert [c.to_dict() for c in a[1]] == [c.to_dict() for c in b[1]] and b[2] == 0

    # a rerun takes everything from the log; another window in the same dir gets its own log
    proc = run_search(*common, '--work-dir', cut, *FAST)
    assert f'(new 0, from log {ref["candidates_in_log"]})' in proc.stdout
    # the fine-tuning config: inherits the search config, fixes the best keep ratios
    from mmengine.config import Config
    path = cut / 'search_best_dynamicvit-vit-tiny-p4_fashion-mnist_max1000_min0.py'
    cfg = Config.fromfile(str(path))
    assert cfg.model.backbone.keep_ratios == ref['best']['config']
    assert cfg.model.backbone.type == 'mmsparse.DynamicVisionTransformer'
    # a changed setting does not silently mix with the old log
    _one_error_line(run_search(*common, '--work-dir', cut, '--seed', 5, *FAST),
                    "written with a different 'settings'", '--work-dir')


def test_search_tool_two_ranks_torchpack_same_best_and_table_error(tmp_path, data_root):
    assert shutil.which('torchpack', path=tool_env()['PATH'])
    env = tool_env(MASTER_PORT='29547', OMP_NUM_THREADS='1')
    proc = run_tool('tools/search.py', DYNAMICVIT, 'none', '--max-latency', 1000,
                    '--latency-table', '--launcher', 'mpi', '--work-dir', tmp_path, *FAST,
                    env=env, launcher_prefix=('torchpack', 'dist-run', '-v', '-np', '2'),
                    timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # mpirun may glue the two ranks' lines together: match the best lines anywhere
    best = dict(re.findall(r'search best \(rank (\d)/2\): (.*? key [0-9a-f]{16})', proc.stdout))
    assert set(best) == {'0', '1'} and best['0'] == best['1'], proc.stdout[-3000:]
    rep = json.loads((tmp_path / 'search_max1000_min0_best.json').read_text())
    assert rep['world_size'] == 2 and rep['table_error']['n'] == rep['candidates_in_log']
    assert 'latency table vs measurement' in proc.stdout + proc.stderr


def test_sparsevit_search_on_voc_sample(tmp_path, data_root):
    proc = run_search(SEARCH_VOC, 'none', '--max-latency', 100000,
                    '--warmup', 0, '--runs', 1, '--batch-size', 1, '--img-size', 64,
                    '--population-size', 2, '--parents', 1, '--iterations', 0,
                    '--work-dir', tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rep = json.loads((tmp_path / 'search_max100000_min0_best.json').read_text())
    assert rep['metric'] == 'coco/bbox_mAP' and rep['split'] == 'val'
    from mmengine.config import Config
    cfg = Config.fromfile(str(next(tmp_path.glob('search_best_*.py'))))
    assert cfg.model.backbone.window_ratios == rep['best']['config']
    # SAA's random ratios are off for fine-tuning; the exact-resume hook stays
    assert [h['type'] for h in cfg.custom_hooks] == ['mmsparse.RNGStateHook']
    assert 'candidates [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]' in proc.stdout + proc.stderr


# ------------------------------------------------------------------ one writer per log
def test_log_lock_is_exclusive_and_released(tmp_path):
    log = str(tmp_path / 'w' / 'search_max1_min0.jsonl')
    a, b = SearchLogLock(log), SearchLogLock(log)
    assert a.acquire() is None and a.acquire() is None  # taken; taking it again is a no-op
    assert open(f'{log}.lock').read().strip() == str(os.getpid())
    held = b.acquire()  # flock is per open file: a second lock in this process is refused too
    assert held.startswith(f'another search is running on {log} (pid {os.getpid()}')
    a.release()
    assert b.acquire() is None
    b.release()


def test_a_second_search_on_a_locked_log_refuses_in_one_line(tmp_path, data_root):
    log = tmp_path / 'search_max1000_min0.jsonl'
    lock = SearchLogLock(str(log))
    assert lock.acquire() is None  # as a running search holds it
    try:
        proc = run_search(DYNAMICVIT, 'none', '--max-latency', 1000, '--work-dir', tmp_path,
                          *FAST)
    finally:
        lock.release()
    _one_error_line(proc, f'another search is running on {log}', f'(pid {os.getpid()}',
                    '--work-dir')
    assert not log.exists()  # nothing written


# A launcher that starts its rank through a shell that outlives it, as torchpack's silentrun
# (`sh -c 'python ... 2>&1'`) does under mpirun.
LAUNCHER = 'import subprocess, sys\nsubprocess.Popen(["/bin/sh", "-c", sys.argv[1]]).wait()\n'


def _running(pid: int) -> bool:
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except OSError:
        return False


@pytest.mark.skipif(not os.path.isdir('/proc/self'), reason='reads the process table in /proc')
def test_a_rank_stops_when_its_launcher_is_killed(tmp_path, data_root):
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    env = tool_env(OMP_NUM_THREADS='1', RANK='0', WORLD_SIZE='1', LOCAL_RANK='0',
                   MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    slow = [a if a != '4' else '20' for a in FAST]  # 20 candidates a generation
    rank_cmd = shlex.join([sys.executable, 'tools/search.py', str(DYNAMICVIT), 'none',
                           '--max-latency', '1000', '--launcher', 'pytorch', '--work-dir',
                           str(tmp_path), *map(str, slow)])
    launcher = subprocess.Popen([sys.executable, '-c', LAUNCHER,
                                 f'{rank_cmd} > {shlex.quote(str(tmp_path / "out.txt"))} 2>&1'],
                                cwd=REPO, env=env)
    log = tmp_path / 'search_max1000_min0.jsonl'
    lock_file = Path(f'{log}.lock')
    rank = None
    try:
        deadline = time.time() + 300
        while not (log.is_file() and '"candidate"' in log.read_text()):
            assert launcher.poll() is None, (tmp_path / 'out.txt').read_text()[-3000:]
            assert time.time() < deadline, 'the search did not start'
            time.sleep(0.2)
        rank = int(lock_file.read_text())
        assert _running(rank)
        launcher.kill()
        launcher.wait()
        t0 = time.time()
        while _running(rank) and time.time() - t0 < 10:
            time.sleep(0.1)
        assert not _running(rank), 'the rank outlived its launcher by 10 s'
        assert 'its launcher (pid' in (tmp_path / 'out.txt').read_text()
        lines = log.read_text()
        time.sleep(1.5)
        assert log.read_text() == lines  # nobody writes the log any more
        lock = SearchLogLock(str(log))
        assert lock.acquire() is None  # and a restart may take it
        lock.release()
    finally:
        if launcher.poll() is None:
            launcher.kill()
        if rank is not None and _running(rank):
            os.kill(rank, 9)


def test_search_run_is_a_library_call(tmp_path, data_root, monkeypatch):
    """mmsparse.search.run does what tools/search.py does, from Python, and gives the lock back."""
    from mmengine.config import Config

    from mmsparse.search import SearchOutcome, run
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    out = run(str(DYNAMICVIT), 'none', max_latency=1000, batch_size=4, warmup=1, runs=3,
              val_subset=64, population_size=4, parents=2, iterations=1,
              latency_source='table', work_dir=str(tmp_path),
              cfg_options={'test_dataloader.num_workers': 0,
                           'test_dataloader.persistent_workers': False})
    assert isinstance(out, SearchOutcome) and out.stopped is None
    assert (out.rank, out.world_size, out.space, out.metric) == (0, 1, 'keep_ratios',
                                                                 'accuracy/top1')
    assert json.loads(open(out.report_path).read()) == json.loads(json.dumps(out.report))
    assert out.report['best']['key'] == out.best.key and len(out.report['history']) == 2
    cfg = Config.fromfile(out.config_path)
    assert cfg.model.backbone.keep_ratios == out.best.config
    assert open(out.config_path).readline().startswith('# Written by tools/search.py')
    assert (tmp_path / 'latency_table.json').is_file()
    lock = SearchLogLock(out.log_path)
    assert lock.acquire() is None  # released when run returned
    lock.release()
    with pytest.raises(TypeError):
        run(str(DYNAMICVIT), 'none', max_latency=1, no_such_option=1)
