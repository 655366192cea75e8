"""Latency-constrained evolutionary search over integer genomes (SparseViT's ``EvolveSearcher``).

Pure: numpy, hashlib and json only; no torch.distributed, no mm* import. A genome is a tuple of
choice indices, one per gene; a :class:`GenomeSpace` says how many choices each gene has and which
genes form a *sorted group* (their indices must be non-decreasing, e.g. the three W-MSA/SW-MSA
pairs of Swin-T's 6-block stage). What the indices mean (window ratios, keep ratios) is the
business of :mod:`mmsparse.search.spaces`.

The search (:class:`EvolutionSearch`), by default SparseViT's ``EvolveSearcher`` as its
``tools/search.py`` runs it:

1. random phase: draw genomes until the population holds ``population_size`` feasible draws;
2. generations: parents = the ``parents`` best of the population just drawn
   (``selection='population'``; ``'elitist'``: the best distinct candidates among the previous
   parents and the population, so the parents never get worse); children: the first
   ``mutation_share`` of the new population by mutation of a random parent, the rest by
   crossover of two random parents (each gene from either); sorted groups are re-sorted after
   every operation. Mutation (``mutation='sample'``) draws a fresh genome of the space (groups
   sorted) and takes each of its genes, by position, with probability ``mutation_prob``
   (``'gene'``: each gene resampled uniformly on its own);
3. the search stops after ``max_draws`` draws in all (SparseViT: 10,000; random phase,
   infeasible draws and repeats included) or after ``iterations`` generations, whichever comes
   first; the result is the best feasible candidate drawn.

With ``selection='population'`` a population is every feasible draw in order, repeats included
(as SparseViT's, where a repeated config is appended again); ``'elitist'`` keeps one of each.

Every random draw comes from one seeded ``numpy.random.Generator``, and the number of draws of an
operation does not depend on the genome's values, so all ranks of a distributed search produce the
same candidates given the same results. Results are cached by the SHA-256 of the candidate's
canonical JSON: a duplicate is never measured or evaluated twice, and a search restarted with the
cache filled from its log replays the same stream and re-evaluates nothing.
"""
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from mmsparse.errors import ConfigError
from mmsparse.validation import Keys

__all__ = ['Genome', 'GenomeSpace', 'SearchSettings', 'SearchSettingsError', 'Candidate',
           'SearchResult', 'EvolutionSearch', 'NoFeasibleCandidateError',
           'EvaluationBudgetReached', 'candidate_key', 'canonical_json', 'rank_candidates']

Genome = Tuple[int, ...]


class SearchSettingsError(ConfigError):
    """A bad ``search_cfg`` value; the message names the full key and the allowed range (a
    :class:`~mmsparse.errors.ConfigError`: one ``error:`` line in the tools)."""


class NoFeasibleCandidateError(RuntimeError):
    """No candidate of the random phase fell inside the latency window."""


class EvaluationBudgetReached(RuntimeError):
    """``max_evaluations`` new candidates were assessed; rerun to resume from the log."""


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no spaces, so equal candidates give equal strings."""
    return json.dumps(obj, sort_keys=True, separators=(',', ':'))


def candidate_key(config: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of a decoded candidate (the duplicate-cache key)."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()


@dataclass(frozen=True)
class GenomeSpace:
    """Integer genomes: gene ``g`` takes values ``0 .. choices[g] - 1``.

    Args:
        choices: number of choices per gene (each >= 1).
        groups: tuples of gene indices whose values must be non-decreasing in that order.
    """
    choices: Tuple[int, ...]
    groups: Tuple[Tuple[int, ...], ...] = ()

    def __post_init__(self) -> None:
        if not self.choices or any(int(c) < 1 for c in self.choices):
            raise ValueError(f'choices must be a non-empty list of positive ints, '
                             f'got {self.choices}')
        seen = [g for grp in self.groups for g in grp]
        if len(seen) != len(set(seen)) or any(not 0 <= g < len(self.choices) for g in seen):
            raise ValueError(f'groups must be disjoint lists of gene indices in '
                             f'[0, {len(self.choices)}), got {self.groups}')

    @property
    def num_genes(self) -> int:
        return len(self.choices)

    def repair(self, genome: Sequence[int]) -> Genome:
        """Sort every group (SparseViT re-sorts the stage-3 triple after mutation/crossover)."""
        out = [int(v) for v in genome]
        for grp in self.groups:
            for g, v in zip(grp, sorted(out[g] for g in grp)):
                out[g] = v
        return tuple(out)

    def is_valid(self, genome: Sequence[int]) -> bool:
        """Right length, every value in range, every group sorted."""
        return (len(genome) == self.num_genes
                and all(0 <= int(v) < c for v, c in zip(genome, self.choices))
                and self.repair(genome) == tuple(int(v) for v in genome))

    def _draw(self, rng: np.random.Generator) -> np.ndarray:
        # one uniform draw per gene, always all of them (a value-independent number of draws)
        return np.floor(rng.random(self.num_genes) * np.asarray(self.choices)).astype(int)

    def random(self, rng: np.random.Generator) -> Genome:
        """A uniformly drawn genome (groups sorted)."""
        return self.repair(self._draw(rng))

    def mutate(self, genome: Genome, rng: np.random.Generator, prob: float,
               mode: str = 'sample') -> Genome:
        """Replace each gene with probability ``prob``, then sort the groups.

        Args:
            genome: the parent.
            rng: the random stream (``2 * num_genes`` uniform draws either way).
            prob: probability of replacing a gene.
            mode: ``'sample'`` (SparseViT's ``_mutate``): the replacements come from one fresh
                genome of :meth:`random` (its groups sorted), gene by gene by position, so a
                replaced low position of a sorted group tends to get a low value;
                ``'gene'``: each replacement is a uniform draw of its gene on its own.
        """
        flips = rng.random(self.num_genes) < prob
        fresh = self.random(rng) if mode == 'sample' else self._draw(rng)
        return self.repair(np.where(flips, np.asarray(fresh), np.asarray(genome)))

    def crossover(self, a: Genome, b: Genome, rng: np.random.Generator) -> Genome:
        """Each gene from ``a`` or ``b`` with probability 1/2."""
        take_b = rng.random(self.num_genes) < 0.5
        return self.repair(np.where(take_b, np.asarray(b), np.asarray(a)))


@dataclass(frozen=True)
class SearchSettings:
    """The ``search_cfg`` of a config (defaults: SparseViT's ``tools/search.py``).

    Args:
        population_size: feasible draws per generation (SparseViT: 100).
        parents: best candidates kept as parents (SparseViT: 25).
        mutation_prob: probability of taking each gene from the fresh draw in a mutation
            (SparseViT: 0.1).
        max_draws: candidates drawn over the whole search, random phase, infeasible draws and
            repeats (answered from the cache) included: SparseViT's ``num_iters=10000``. None: no
            limit (``iterations`` must then be given).
        iterations: generations after the random one; None (default, as SparseViT): as many as
            ``max_draws`` allows. A generation is ``population_size`` feasible draws, so the
            random phase and 100 generations of 100 take at least 10,100 draws, more with
            infeasible ones.
        selection: ``'population'`` (SparseViT): the parents are the best of the generation
            just drawn, repeats included, and a crossover takes two different parents;
            ``'elitist'``: the best distinct candidates among the previous parents and the new
            generation (repeats dropped), a crossover may draw one parent twice.
        mutation: ``'sample'`` (SparseViT): mix the parent with a fresh draw of the space
            (sorted groups sorted), gene by gene by position; ``'gene'``: resample each chosen
            gene uniformly on its own, then sort the groups.
        mutation_share: fraction of each generation made by mutation (SparseViT: the first
            ``population_size // 2``); the rest by crossover.
        seed: seed of the search's random stream (the same on every rank).
        max_random_trials: draws allowed in the random phase (default: no limit but
            ``max_draws``; 20 x population_size without ``max_draws``). Whatever the limits,
            the search stops with :class:`NoFeasibleCandidateError` once 20 x population_size
            random draws found no feasible candidate.
        max_trials_per_iteration: draws allowed per generation (default as
            ``max_random_trials``).
    """
    population_size: int = 100
    parents: int = 25
    mutation_prob: float = 0.1
    max_draws: Optional[int] = 10000
    iterations: Optional[int] = None
    selection: str = 'population'
    mutation: str = 'sample'
    mutation_share: float = 0.5
    seed: int = 0
    max_random_trials: Optional[int] = None
    max_trials_per_iteration: Optional[int] = None

    SELECTIONS = ('population', 'elitist')
    MUTATIONS = ('sample', 'gene')
    # settings whose None means something (no limit / the default limit)
    OPTIONAL = ('max_draws', 'iterations', 'max_random_trials', 'max_trials_per_iteration')

    def __post_init__(self) -> None:
        keys = Keys('search_cfg', SearchSettingsError)
        keys.choice('selection', self.selection, self.SELECTIONS)
        keys.choice('mutation', self.mutation, self.MUTATIONS)

    @classmethod
    def from_dict(cls, cfg: Optional[Mapping[str, Any]], key: str = 'search_cfg',
                  ignore: Sequence[str] = ()) -> 'SearchSettings':
        """Validate a dict of settings; unknown keys and bad values raise, naming the key.

        Args:
            cfg: the settings (missing keys keep their defaults).
            key: the config key named in error messages.
            ignore: keys that belong to another part (e.g. ``candidates``), skipped here.
        """
        cfg = dict(cfg or {})
        names = {f.name for f in fields(cls)}
        unknown = sorted(k for k in cfg if k not in names and k not in ignore)
        if unknown:
            raise SearchSettingsError(f'{key}.{unknown[0]}: unknown search setting; known: '
                                      f'{", ".join(sorted(names | set(ignore)))}')
        values = {k: v for k, v in cfg.items()
                  if k in names and (v is not None or k in cls.OPTIONAL)}
        keys = Keys(key, SearchSettingsError)
        for name, low in (('population_size', 1), ('parents', 1), ('iterations', 0), ('seed', 0),
                          ('max_draws', 1), ('max_random_trials', 1),
                          ('max_trials_per_iteration', 1)):
            if values.get(name) is not None:
                values[name] = int(keys.number(name, values[name], low, integer=True))
        for name in ('mutation_prob', 'mutation_share'):
            if name in values:
                values[name] = float(keys.number(name, values[name], 0, 1))
        out = cls(**values)
        keys.require('parents', out.parents <= out.population_size,
                     f'({out.parents}) must not exceed {keys.key("population_size")} '
                     f'({out.population_size})')
        keys.require('max_draws', out.max_draws is not None or out.iterations is not None,
                     f'and {keys.key("iterations")} are both None: the search would never end; '
                     f'give at least one')
        return out

    def _phase_limit(self, explicit: Optional[int]) -> Optional[int]:
        if explicit is not None:
            return explicit
        return None if self.max_draws is not None else 20 * self.population_size

    @property
    def random_trials(self) -> Optional[int]:
        """Draws allowed in the random phase (None: only ``max_draws`` limits them)."""
        return self._phase_limit(self.max_random_trials)

    @property
    def trials_per_iteration(self) -> Optional[int]:
        """Draws allowed per generation (None: only ``max_draws`` limits them)."""
        return self._phase_limit(self.max_trials_per_iteration)

    @property
    def num_mutations(self) -> int:
        """Children of a generation made by mutation (SparseViT: ``population_size // 2``)."""
        return int(math.floor(self.population_size * self.mutation_share + 1e-9))

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass
class Candidate:
    """One assessed candidate, as written to the search log (one JSON line).

    ``latency_ms`` is None when the latency table predicted it far outside the window
    (``skipped``); ``score`` is None when infeasible (never evaluated).
    """
    key: str
    genome: List[int]
    config: Any
    feasible: bool
    latency_ms: Optional[float] = None
    predicted_ms: Optional[float] = None
    score: Optional[float] = None
    skipped: bool = False
    index: int = 0
    phase: str = ''
    generation: int = 0

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> 'Candidate':
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class SearchResult:
    """The outcome: the best candidate, the best after each generation, and counters."""
    best: Candidate
    history: List[Dict[str, Any]] = field(default_factory=list)
    evaluated: int = 0
    cache_hits: int = 0
    skipped_by_table: int = 0
    trials: int = 0


def rank_candidates(cands: Sequence[Candidate]) -> List[Candidate]:
    """Feasible candidates, best first: higher score, then lower latency, then key (a total order,
    so every rank picks the same parents)."""
    ok = [c for c in cands if c.feasible and c.score is not None]
    return sorted(ok, key=lambda c: (-c.score, c.latency_ms if c.latency_ms is not None
                                     else math.inf, c.key))


class EvolutionSearch:
    """The evolutionary search loop with a duplicate cache (see the module docstring).

    Args:
        space: the genome space.
        settings: population size, parents, mutation probability, iterations, seed.
        decode: genome -> JSON-able candidate (hashed for the cache, written to the log).
        latency_fn: genome -> latency in ms (measured; called only for unseen candidates that
            the table does not skip).
        score_fn: genome -> score, higher is better (called only for feasible unseen ones).
        min_latency: lower end of the window (ms).
        max_latency: upper end of the window (ms).
        predict_fn: optional genome -> predicted latency (a latency table).
        table_margin: a candidate whose prediction lies more than this fraction outside the
            window is infeasible without measurement.
        cache: key -> :class:`Candidate` already assessed (e.g. read from the log).
        on_candidate: called with every newly assessed candidate (e.g. to append to the log).
        on_iteration: called with the history entry after the random phase and each generation.
        max_evaluations: stop (raise :class:`EvaluationBudgetReached`) after this many newly
            assessed candidates; None = no limit.
    """

    def __init__(self, space: GenomeSpace, settings: SearchSettings, *,
                 decode: Callable[[Genome], Any],
                 latency_fn: Callable[[Genome], float],
                 score_fn: Callable[[Genome], float],
                 min_latency: float, max_latency: float,
                 predict_fn: Optional[Callable[[Genome], float]] = None,
                 table_margin: float = 0.1,
                 cache: Optional[Mapping[str, Candidate]] = None,
                 on_candidate: Optional[Callable[[Candidate], None]] = None,
                 on_iteration: Optional[Callable[[Dict[str, Any]], None]] = None,
                 max_evaluations: Optional[int] = None) -> None:
        if min_latency > max_latency:
            raise ValueError(f'min_latency {min_latency} is above max_latency {max_latency}')
        self.space = space
        self.settings = settings
        self.decode = decode
        self.latency_fn = latency_fn
        self.score_fn = score_fn
        self.min_latency = float(min_latency)
        self.max_latency = float(max_latency)
        self.predict_fn = predict_fn
        self.table_margin = float(table_margin)
        self.cache: Dict[str, Candidate] = dict(cache or {})
        self.on_candidate = on_candidate
        self.on_iteration = on_iteration
        self.max_evaluations = max_evaluations
        self.rng = np.random.default_rng(settings.seed)
        self.result: Optional[SearchResult] = None
        self._evaluated = self._hits = self._skipped = self._trials = 0
        self._seen_latency: List[float] = []
        self._seen_predicted: List[float] = []

    # ------------------------------------------------------------------ one candidate
    def feasible(self, latency: float) -> bool:
        return self.min_latency <= latency <= self.max_latency

    def assess(self, genome: Genome, phase: str = '', generation: int = 0) -> Candidate:
        """Latency (or cached result), feasibility, and the score if feasible."""
        self._trials += 1
        config = self.decode(genome)
        key = candidate_key(config)
        if key in self.cache:
            self._hits += 1
            cand = self.cache[key]
            self._note(cand)
            return cand
        if self.max_evaluations is not None and self._evaluated >= self.max_evaluations:
            raise EvaluationBudgetReached(f'stopped after {self._evaluated} new evaluations '
                                          f'(max_evaluations); rerun to resume from the log')
        cand = Candidate(key=key, genome=[int(v) for v in genome], config=config,
                         feasible=False, index=len(self.cache), phase=phase,
                         generation=generation)
        if self.predict_fn is not None:
            cand.predicted_ms = float(self.predict_fn(genome))
            low = self.min_latency * (1 - self.table_margin)
            high = self.max_latency * (1 + self.table_margin)
            cand.skipped = not low <= cand.predicted_ms <= high
        if not cand.skipped:
            cand.latency_ms = float(self.latency_fn(genome))
            cand.feasible = self.feasible(cand.latency_ms)
            if cand.feasible:
                cand.score = float(self.score_fn(genome))
        self._evaluated += 1
        self._skipped += int(cand.skipped)
        self.cache[key] = cand
        self._note(cand)
        if self.on_candidate is not None:
            self.on_candidate(cand)
        return cand

    def _note(self, cand: Candidate) -> None:
        if cand.latency_ms is not None:
            self._seen_latency.append(cand.latency_ms)
        if cand.predicted_ms is not None:
            self._seen_predicted.append(cand.predicted_ms)

    # ------------------------------------------------------------------ the loop
    def _draws_left(self) -> bool:
        """Whether the search may draw another candidate (``max_draws``)."""
        return self.settings.max_draws is None or self._trials < self.settings.max_draws

    def _collect(self, limit: Optional[int], draw: Callable[[int], Tuple[Genome, str]],
                 generation: int, give_up: Optional[int] = None) -> List[Candidate]:
        """Draw until ``population_size`` feasible candidates are held, ``limit`` draws were
        made in this phase or ``max_draws`` in all, or ``give_up`` draws found none feasible.
        ``draw(n)`` makes the genome of the next draw, n being the feasible candidates held so
        far. With ``selection='population'`` every feasible draw is held (repeats included, in
        order), else one of each."""
        size = self.settings.population_size
        repeats = self.settings.selection == 'population'
        held: Dict[Any, Candidate] = {}
        n = 0
        while len(held) < size and (limit is None or n < limit) and self._draws_left():
            if give_up is not None and n >= give_up and not held:
                break
            genome, phase = draw(len(held))
            cand = self.assess(genome, phase, generation)
            n += 1
            if cand.feasible:
                held.setdefault(len(held) if repeats else cand.key, cand)
        return list(held.values())

    def _random_phase(self) -> List[Candidate]:
        # a window no candidate falls in is reported after 20 x population_size draws, not after
        # all of max_draws (each infeasible draw still costs a latency measurement)
        population = self._collect(self.settings.random_trials,
                                   lambda n: (self.space.random(self.rng), 'random'), 0,
                                   give_up=20 * self.settings.population_size)
        if not population:
            raise NoFeasibleCandidateError(self._no_feasible_message())
        return population

    def _no_feasible_message(self) -> str:
        seen = self._seen_latency
        msg = (f'no candidate of the random phase ({self._trials} draws) has a latency in '
               f'[{self.min_latency:g}, {self.max_latency:g}] ms')
        if seen:
            msg += f'; measured latencies ranged over [{min(seen):.3f}, {max(seen):.3f}] ms'
        if self._seen_predicted:
            msg += (f'; table predictions over [{min(self._seen_predicted):.3f}, '
                    f'{max(self._seen_predicted):.3f}] ms')
        return msg + '. Widen --min-latency / --max-latency to overlap that range'

    def _pair(self, parents: List[Candidate]) -> Tuple[Candidate, Candidate]:
        """Two parents for a crossover: two different entries (``selection='population'``, as
        ``random.sample(candidates, 2)``; the only parent twice when there is one), or two
        independent picks (``'elitist'``)."""
        n = len(parents)
        if self.settings.selection == 'population':
            if n < 2:
                return parents[0], parents[0]
            i, j = self.rng.choice(n, size=2, replace=False)
        else:
            i, j = self.rng.integers(n, size=2)
        return parents[int(i)], parents[int(j)]

    def _children(self, parents: List[Candidate], generation: int) -> List[Candidate]:
        settings = self.settings

        def draw(n: int) -> Tuple[Genome, str]:
            if n < settings.num_mutations:
                parent = parents[int(self.rng.integers(len(parents)))]
                return self.space.mutate(tuple(parent.genome), self.rng, settings.mutation_prob,
                                         settings.mutation), 'mutation'
            a, b = self._pair(parents)
            return self.space.crossover(tuple(a.genome), tuple(b.genome), self.rng), 'crossover'

        return self._collect(settings.trials_per_iteration, draw, generation)

    def select_parents(self, parents: List[Candidate],
                       population: List[Candidate]) -> List[Candidate]:
        """The next parents from the previous ones and the generation just drawn (in draw
        order), as ``SearchSettings.selection`` says."""
        k = self.settings.parents
        if self.settings.selection == 'elitist':
            pool = {c.key: c for c in parents + population}
            return rank_candidates(list(pool.values()))[:k]
        if not population:  # a generation without a feasible draw: nothing to select from
            return parents
        # SparseViT: sorted(population, key=metric, reverse=True)[:25], a stable sort (ties in
        # the order drawn)
        return sorted(population, key=lambda c: -c.score)[:k]

    def _record(self, generation: int, best: Candidate,
                population: List[Candidate]) -> Dict[str, Any]:
        entry = dict(generation=generation, best_key=best.key, best_config=best.config,
                     best_score=best.score, best_latency_ms=best.latency_ms,
                     population=len(population), evaluated=self._evaluated,
                     cache_hits=self._hits, skipped_by_table=self._skipped, trials=self._trials)
        if self.on_iteration is not None:
            self.on_iteration(entry)
        return entry

    def run(self) -> SearchResult:
        """Run the whole search; returns the best feasible candidate drawn and the history
        (one entry after the random phase and after each generation, with the best so far)."""
        settings = self.settings
        history = []
        population = self._random_phase()
        parents: List[Candidate] = []
        best: Optional[Candidate] = None
        generation = 0
        while True:
            parents = self.select_parents(parents, population)
            best = rank_candidates(([best] if best is not None else []) + population)[0]
            history.append(self._record(generation, best, population))
            if (settings.iterations is not None and generation >= settings.iterations) \
                    or not self._draws_left():
                break
            generation += 1
            population = self._children(parents, generation)
        self.result = SearchResult(best=best, history=history, evaluated=self._evaluated,
                                   cache_hits=self._hits, skipped_by_table=self._skipped,
                                   trials=self._trials)
        return self.result
