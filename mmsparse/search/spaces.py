"""Search spaces: how a genome of choice indices becomes a backbone setting (pure, no mmengine).

A space is chosen by the backbone's class (:func:`space_for_backbone`, a small registry):

- ``SparseSwinTransformer`` -> ``window_ratios``: one gene per group of ``group_size`` blocks (a
  W-MSA / SW-MSA pair, as SparseViT and :class:`~mmsparse.engine.SparsityAwareAdaptationHook`),
  choices = the candidate ratios ascending, genes of one stage sorted (Swin-T: stages 0, 1, 3 one
  gene each, stage 2 a non-decreasing triple). Decoded as the per-stage, per-block lists that
  ``model.backbone.window_ratios`` takes.
- ``DynamicVisionTransformer`` -> ``keep_ratios``: one gene per pruning location, choices = the
  candidate keep ratios *descending* (choice 0 keeps the most), all genes one sorted group, so the
  cumulative keep ratios never increase. A compact (composed) DynamicViT is a
  ``DynamicVisionTransformer`` and gets the same space. The smallest candidate must keep at least
  one patch token (:func:`check_keep_candidates`, the rule of
  :func:`mmsparse.ops.tokens.keep_counts`): a candidate set that could leave a stage empty is
  refused when the space is built, not when such a genome is first drawn.

A *joint* space (:func:`joint_space`, ``search_cfg.structures``) puts one categorical gene in front
of an inner space: which of several models (e.g. compact models of different widths) the
candidate runs, so the search trades structure against tokens.

Choice 0 is the least sparse setting, which the latency table uses as its base.
"""
import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from mmsparse.ops.tokens import keep_counts
from mmsparse.ops.windows import RATIO_GROUP_SIZE, expand_group_ratios, num_ratio_groups
from mmsparse.validation import Keys
from .evolution import Genome, GenomeSpace, SearchSettingsError

__all__ = ['SearchSpace', 'JointSearchSpace', 'window_ratio_space', 'keep_ratio_space',
           'joint_space', 'SEARCH_SPACES', 'register_space', 'space_for_backbone',
           'DEFAULT_KEEP_CANDIDATES', 'min_keep_ratio', 'check_keep_candidates',
           'STRUCTURE_GENE', 'AnySpace']

# keep ratios (of the original patch tokens) a DynamicViT stage may take
DEFAULT_KEEP_CANDIDATES = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)

SEARCH_KEYS = Keys('search_cfg', SearchSettingsError)
# the name of a joint space's categorical gene, and its key in a decoded candidate
STRUCTURE_GENE = 'structure'


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

    @property
    def attribute(self) -> str:
        """The backbone attribute a candidate sets (``name``)."""
        return self.name

    @property
    def structures(self) -> Tuple[str, ...]:
        """Names of the models a categorical gene chooses among (none: one model)."""
        return ()

    @property
    def inner(self) -> 'SearchSpace':
        """The space of one model's setting (itself)."""
        return self

    def setting(self, genome: Sequence[int]) -> Tuple[int, Any]:
        """``(model index, backbone attribute value)`` of a genome: always model 0 here."""
        return 0, self.decode(genome)

    def describe(self, config: Any) -> str:
        """A decoded candidate as a log line writes it (``keep_ratios=[0.9, 0.7]``)."""
        return f'{self.name}={config}'

    def apply(self, backbone: Any, genome: Sequence[int]) -> Any:
        """Set the decoded value on the backbone (its setter validates); returns the value."""
        value = self.decode(genome)
        setattr(backbone, self.name, value)
        return value


@dataclass(frozen=True)
class JointSearchSpace:
    """A categorical gene (which model) in front of an inner space (that model's setting).

    Gene 0 takes ``0 .. len(structures) - 1``: the index of the model (a
    ``search_cfg.structures`` entry); genes ``1 ..`` are the inner space's, its sorted groups
    shifted by one. A decoded candidate is ``{'structure': name, <inner.name>: value}`` (what the
    log, the duplicate cache key and the fine-tuning config hold), so two structures with the same
    keep ratios are different candidates. Mutation and crossover treat gene 0 as any other gene
    (uniform redraw, from either parent); it is in no sorted group.

    Attributes:
        structures: the entry names, in ``search_cfg.structures`` order.
        inner: the space of one model's setting (e.g. :func:`keep_ratio_space`).
        genome_space: ``(len(structures), *inner choices)``.
    """
    structures: Tuple[str, ...]
    inner: SearchSpace
    genome_space: GenomeSpace

    @property
    def name(self) -> str:
        return f'{STRUCTURE_GENE}+{self.inner.name}'

    @property
    def attribute(self) -> str:
        return self.inner.name

    @property
    def gene_names(self) -> Tuple[str, ...]:
        return (STRUCTURE_GENE, ) + self.inner.gene_names

    @property
    def candidates(self) -> Tuple[float, ...]:
        """The inner genes' values (the structures are :attr:`structures`)."""
        return self.inner.candidates

    def split(self, genome: Sequence[int]) -> Tuple[int, Tuple[int, ...]]:
        """``(structure index, inner genome)``."""
        return int(genome[0]), tuple(int(v) for v in genome[1:])

    def decode(self, genome: Sequence[int]) -> Dict[str, Any]:
        if not self.genome_space.is_valid(genome):
            raise ValueError(f'{self.name}: invalid genome {tuple(genome)}')
        index, rest = self.split(genome)
        return {STRUCTURE_GENE: self.structures[index], self.inner.name: self.inner.decode(rest)}

    def setting(self, genome: Sequence[int]) -> Tuple[int, Any]:
        """``(structure index, value of the inner attribute)`` of a genome."""
        index, rest = self.split(genome)
        return index, self.inner.decode(rest)

    def describe(self, config: Mapping[str, Any]) -> str:
        return (f'{STRUCTURE_GENE}={config[STRUCTURE_GENE]} '
                f'{self.inner.name}={config[self.inner.name]}')


AnySpace = Union[SearchSpace, JointSearchSpace]


def joint_space(structures: Sequence[str], inner: SearchSpace) -> JointSearchSpace:
    """The space of ``inner`` settings on one of ``structures`` (names, at least one, distinct).

    Example:
        >>> space = joint_space(['uvc0.5', 'dense'], keep_ratio_space(2, [1.0, 0.7, 0.5]))
        >>> space.decode((1, 0, 2))
        {'structure': 'dense', 'keep_ratios': [1.0, 0.5]}
    """
    names = tuple(str(n) for n in structures)
    if not names or len(set(names)) != len(names):
        raise ValueError(f'structures must be distinct names, at least one, got {names}')
    inner_gs = inner.genome_space
    gs = GenomeSpace(choices=(len(names), ) + tuple(inner_gs.choices),
                     groups=tuple(tuple(g + 1 for g in grp) for grp in inner_gs.groups))
    return JointSearchSpace(names, inner, gs)


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


def min_keep_ratio(num_patches: int) -> float:
    """The smallest keep ratio, at 4 decimals, that keeps a patch token of ``num_patches``.

    :func:`mmsparse.ops.tokens.keep_counts` keeps ``int(num_patches * ratio)`` tokens, so the
    bound is ``1 / num_patches`` rounded up (49 patches: 0.0205).
    """
    ratio = math.ceil(1e4 / num_patches) / 1e4
    while int(num_patches * ratio) < 1:  # float rounding of num_patches * ratio
        ratio += 1e-4
    return round(ratio, 4)


def check_keep_candidates(candidates: Sequence[float], num_patches: int,
                          key: str = 'search_cfg.candidates', where: str = '') -> None:
    """Refuse keep ratios of which the smallest keeps no patch token of ``num_patches``.

    Every stage of a genome may take the smallest candidate (the sorted group allows it down to
    the last stage), so that candidate decides whether some genome would leave a stage empty.

    Args:
        candidates: keep ratios.
        num_patches: patch tokens of the input (``img_size / patch_size`` squared).
        key: the config key named in the error.
        where: what input ``num_patches`` is of, for the message (e.g. ``' of the timed input'``).

    Raises:
        SearchSettingsError: one line naming ``key`` and the smallest allowed ratio.
    """
    low = min(float(c) for c in candidates)
    try:
        keep_counts(int(num_patches), [low])
    except ValueError:
        raise SearchSettingsError(
            f'{key}: keep ratio {low:g} keeps int({num_patches} * {low:g}) = '
            f'{int(num_patches * low)} of the {num_patches} patch tokens{where}, so a stage '
            f'would keep no token; the smallest allowed ratio is '
            f'{min_keep_ratio(num_patches):g} (candidates must lie in '
            f'[{min_keep_ratio(num_patches):g}, 1])') from None


def keep_ratio_space(num_stages: int, candidates: Sequence[float],
                     key: str = 'search_cfg.candidates',
                     num_patches: Optional[int] = None) -> SearchSpace:
    """DynamicViT's space: one keep ratio per pruning location, non-increasing.

    Args:
        num_stages: pruning locations.
        candidates: keep ratios in (0, 1] (sorted descending here; 1 = dense).
        key: the config key named in errors.
        num_patches: patch tokens of the model's input; if given, the smallest candidate must
            keep at least one of them (:func:`check_keep_candidates`).
    """
    cands = tuple(sorted(_check_candidates(candidates, key, 0.0, 1.0, False), reverse=True))
    if num_patches is not None:
        check_keep_candidates(cands, num_patches, key)
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
    # the patch grid of the backbone's img_size (the evaluated images); the timed input's grid,
    # if another --img-size is timed, is checked by the search (mmsparse.search.run)
    return keep_ratio_space(len(backbone.pruning_loc),
                            DEFAULT_KEEP_CANDIDATES if candidates is None else candidates,
                            num_patches=getattr(backbone, 'num_patches', None))


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
