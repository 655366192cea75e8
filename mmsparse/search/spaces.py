"""Search spaces: how a genome of choice indices becomes a backbone setting (pure, no mmengine).

A space is chosen by the backbone's class (:func:`space_for_backbone`, a small registry):

- ``SparseSwinTransformer`` -> ``window_ratios``: one gene per group of ``group_size`` blocks (a
  W-MSA / SW-MSA pair, as SparseViT and :class:`~mmsparse.engine.SparsityAwareAdaptationHook`),
  choices = the candidate ratios ascending, genes of one stage sorted (Swin-T: stages 0, 1, 3 one
  gene each, stage 2 a non-decreasing triple). Decoded as the per-stage, per-block lists that
  ``model.backbone.window_ratios`` takes.
- ``DynamicVisionTransformer`` -> ``keep_ratios``: one gene per pruning location, choices = the
  candidate keep ratios *descending* (choice 0 keeps the most), all genes one sorted group, so the
  cumulative keep ratios never increase.

Choice 0 is the least sparse setting, which the latency table uses as its base.
"""
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from mmsparse.ops.windows import RATIO_GROUP_SIZE, expand_group_ratios, num_ratio_groups
from mmsparse.validation import Keys
from .evolution import Genome, GenomeSpace, SearchSettingsError

__all__ = ['SearchSpace', 'window_ratio_space', 'keep_ratio_space', 'SEARCH_SPACES',
           'register_space', 'space_for_backbone', 'DEFAULT_KEEP_CANDIDATES']

# keep ratios (of the original patch tokens) a DynamicViT stage may take
DEFAULT_KEEP_CANDIDATES = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)

SEARCH_KEYS = Keys('search_cfg', SearchSettingsError)


@dataclass(frozen=True)
class SearchSpace:
    """A genome space plus its meaning.

    Attributes:
        name: the backbone attribute / constructor key it sets (``window_ratios``).
        genome_space: the integer space the searcher explores.
        gene_names: one readable name per gene (``stage2_pair1``).
        candidates: the values a gene's choice indices stand for, in choice order.
        decode_fn: genome -> the attribute value (JSON-able lists).
    """
    name: str
    genome_space: GenomeSpace
    gene_names: Tuple[str, ...]
    candidates: Tuple[float, ...]
    decode_fn: Callable[[Genome], Any]

    def decode(self, genome: Sequence[int]) -> Any:
        """The backbone setting of a genome (what the log, the cache key and configs hold)."""
        if not self.genome_space.is_valid(genome):
            raise ValueError(f'{self.name}: invalid genome {tuple(genome)}')
        return self.decode_fn(tuple(int(v) for v in genome))

    def apply(self, backbone: Any, genome: Sequence[int]) -> Any:
        """Set the decoded value on the backbone (its setter validates); returns the value."""
        value = self.decode(genome)
        setattr(backbone, self.name, value)
        return value


def _check_candidates(candidates: Any, key: str, low: float, high: float,
                      closed_low: bool) -> List[float]:
    """Candidates in ``[low, high)`` (``closed_low``) or ``(low, high]``, no duplicates."""
    prefix, _, name = key.rpartition('.')
    keys = Keys(prefix, SearchSettingsError)
    keys.numbers(name, candidates, low, high, low_open=not closed_low, high_open=closed_low)
    values = [float(c) for c in candidates]
    keys.require(name, len(set(values)) == len(values),
                 f'has duplicate values: {list(candidates)}')
    return values


def window_ratio_space(depths: Sequence[int], candidates: Sequence[float],
                       group_size: int = RATIO_GROUP_SIZE,
                       key: str = 'search_cfg.candidates') -> SearchSpace:
    """SparseViT's space: per stage, one sorted ratio per group of ``group_size`` blocks.

    The grouping is :func:`mmsparse.ops.windows.num_ratio_groups` /
    :func:`~mmsparse.ops.windows.expand_group_ratios`, the rule of the backbone and the SAA hook;
    the genes of a stage form one sorted group, so its ratios never decrease.

    Args:
        depths: blocks per stage (Swin-T: 2, 2, 6, 2), each a multiple of ``group_size``.
        candidates: window ratios in [0, 1) (sorted here; 0 = dense).
        group_size: consecutive blocks sharing one ratio.
        key: the config key named in errors.
    """
    cands = tuple(sorted(_check_candidates(candidates, key, 0.0, 1.0, True)))
    SEARCH_KEYS.require('group_size', all(d % group_size == 0 for d in depths),
                        f'{group_size} must divide every stage depth {tuple(depths)}')
    names, groups, stage_genes = [], [], []
    for s, depth in enumerate(depths):
        genes = list(range(len(names), len(names) + num_ratio_groups(depth, group_size)))
        names += [f'stage{s}' if len(genes) == 1 else f'stage{s}_{i + 1}'
                  for i in range(len(genes))]
        stage_genes.append(genes)
        if len(genes) > 1:
            groups.append(tuple(genes))

    def decode(genome: Genome) -> List[List[float]]:
        return [expand_group_ratios([cands[genome[g]] for g in genes], group_size)
                for genes in stage_genes]

    space = GenomeSpace(choices=tuple([len(cands)] * len(names)), groups=tuple(groups))
    return SearchSpace('window_ratios', space, tuple(names), cands, decode)


def keep_ratio_space(num_stages: int, candidates: Sequence[float],
                     key: str = 'search_cfg.candidates') -> SearchSpace:
    """DynamicViT's space: one keep ratio per pruning location, non-increasing.

    Args:
        num_stages: pruning locations.
        candidates: keep ratios in (0, 1] (sorted descending here; 1 = dense).
        key: the config key named in errors.
    """
    cands = tuple(sorted(_check_candidates(candidates, key, 0.0, 1.0, False), reverse=True))
    genes = tuple(range(num_stages))

    def decode(genome: Genome) -> List[float]:
        return [cands[g] for g in genome]

    space = GenomeSpace(choices=tuple([len(cands)] * num_stages),
                        groups=(genes, ) if num_stages > 1 else ())
    return SearchSpace('keep_ratios', space, tuple(f'stage{i}' for i in genes), cands, decode)


def _window_space_of(backbone: Any, candidates: Optional[Sequence[float]],
                     group_size: int = RATIO_GROUP_SIZE) -> SearchSpace:
    SEARCH_KEYS.require('candidates', candidates is not None, 'must be given (no window ratios)')
    return window_ratio_space(backbone.depths, candidates, group_size)


def _keep_space_of(backbone: Any, candidates: Optional[Sequence[float]],
                   group_size: int = 1) -> SearchSpace:
    return keep_ratio_space(len(backbone.pruning_loc),
                            DEFAULT_KEEP_CANDIDATES if candidates is None else candidates)


# backbone class name -> builder(backbone, candidates, group_size) -> SearchSpace
SEARCH_SPACES: Dict[str, Callable[..., SearchSpace]] = {
    'SparseSwinTransformer': _window_space_of,
    'DynamicVisionTransformer': _keep_space_of,
}


def register_space(class_name: str, builder: Callable[..., SearchSpace]) -> None:
    """Teach the search a new backbone: ``builder(backbone, candidates, group_size)``."""
    SEARCH_SPACES[class_name] = builder


def space_for_backbone(backbone: Any, candidates: Optional[Sequence[float]] = None,
                       group_size: Optional[int] = None) -> SearchSpace:
    """The search space of a built backbone, by its class (or a base class) name.

    Raises:
        SearchSettingsError: the backbone has no registered space.
    """
    for cls in type(backbone).__mro__:
        if cls.__name__ in SEARCH_SPACES:
            builder = SEARCH_SPACES[cls.__name__]
            return builder(backbone, candidates) if group_size is None else \
                builder(backbone, candidates, group_size)
    Keys('model.backbone', SearchSettingsError).fail(
        'type:', f'{type(backbone).__name__} has nothing to search; supported: '
        f'{", ".join(sorted(SEARCH_SPACES))} '
        f"(e.g. type='mmsparse.SparseSwinTransformer')")
