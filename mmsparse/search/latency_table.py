"""A per-gene latency table: predict a candidate's latency from costs measured once (pure).

Model: ``latency(genome) = base + sum_g delta[g][genome[g]]``, where ``base`` is the latency of the
all-zero genome and ``delta[g][c]`` the change when gene ``g`` (e.g. one W-MSA/SW-MSA pair of a
Swin stage, or one DynamicViT stage) takes choice ``c``. This is exact when each gene's cost
depends on its own choice only, which holds for window ratios (a block's cost depends on its own
kept windows) and keep ratios (a segment's cost depends on the tokens kept at its start). A
per-group overhead paid once when any gene of the group is > 0 (SparseViT's activation scores of a
stage) is exact too: the probes below telescope it onto the group's last gene. Not modelled:
interactions between genes of different groups (e.g. cache effects), hence the measured error.

The deltas are measured on *probe* genomes that stay valid under sorted groups: for gene ``g`` of
a group and choice ``c``, the probe sets ``g`` and every later gene of its group to ``c`` (others
0), and ``delta[g][c] = L(probe(g, c)) - L(probe(next gene of the group, c))`` (or ``- base`` for
the last gene of a group, and for a gene in no group). That is ``1 + sum_g (choices_g - 1)``
measurements (49 for Swin-T with 9 candidate ratios).

With a categorical gene (a joint space, ``search_cfg.structures``: gene 0 picks one of several
models) the table is :class:`StructureLatencyTable`, one :class:`LatencyTable` per model over the
inner genes, measured on that model. One additive table across the categorical gene would be
wrong, not merely inexact: a keep-ratio step saves the dropped tokens' cost in every later layer,
and that cost is the structure's (a narrower model saves less per token), so structure and keep
ratio interact in every delta. Per-structure tables stay exact wherever the single-model table is,
at ``len(structures)`` times the probes (2 x 15 for two models and two DynamicViT stages of 8
candidates).
"""
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from .evolution import Genome, GenomeSpace

__all__ = ['LatencyTable', 'StructureLatencyTable', 'table_from_dict', 'probe_genomes',
           'build_latency_table', 'prediction_errors']


def _group_of(space: GenomeSpace) -> Dict[int, Tuple[int, ...]]:
    out = {g: (g, ) for g in range(space.num_genes)}
    for grp in space.groups:
        for g in grp:
            out[g] = tuple(grp)
    return out


def _probe(space: GenomeSpace, gene: int, choice: int) -> Genome:
    genome = [0] * space.num_genes
    grp = _group_of(space)[gene]
    for g in grp[grp.index(gene):]:
        genome[g] = choice
    return tuple(genome)


def probe_genomes(space: GenomeSpace) -> List[Genome]:
    """The genomes to measure, all-zero first, without duplicates (all valid in ``space``)."""
    out = [tuple([0] * space.num_genes)]
    for g, n in enumerate(space.choices):
        for c in range(1, n):
            p = _probe(space, g, c)
            if p not in out:
                out.append(p)
    return out


@dataclass
class LatencyTable:
    """``base`` ms and ``deltas[g][c]`` ms (``deltas[g][0] == 0``)."""
    base: float
    deltas: List[List[float]]

    def predict(self, genome: Sequence[int]) -> float:
        """Predicted latency (ms) of ``genome``."""
        if len(genome) != len(self.deltas):
            raise ValueError(f'genome has {len(genome)} genes, the table {len(self.deltas)}')
        return self.base + sum(self.deltas[g][int(c)] for g, c in enumerate(genome))

    def to_dict(self) -> Dict[str, Any]:
        return dict(base=self.base, deltas=self.deltas)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> 'LatencyTable':
        return cls(base=float(d['base']), deltas=[[float(v) for v in row] for row in d['deltas']])


@dataclass
class StructureLatencyTable:
    """One :class:`LatencyTable` per structure of a joint genome ``(structure, *inner genes)``.

    ``predict(genome) = tables[genome[0]].predict(genome[1:])`` (see the module docstring for why
    the categorical gene gets its own tables rather than a row of deltas).
    """
    tables: List[LatencyTable]

    def predict(self, genome: Sequence[int]) -> float:
        """Predicted latency (ms) of a joint genome."""
        index = int(genome[0])
        if not 0 <= index < len(self.tables):
            raise ValueError(f'structure gene {index} outside the {len(self.tables)} tables')
        return self.tables[index].predict(genome[1:])

    @property
    def base(self) -> float:
        """The fastest structure's base latency (its least sparse setting)."""
        return min(t.base for t in self.tables)

    def to_dict(self) -> Dict[str, Any]:
        return dict(structures=[t.to_dict() for t in self.tables])

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> 'StructureLatencyTable':
        return cls([LatencyTable.from_dict(t) for t in d['structures']])


def table_from_dict(d: Dict[str, Any]) -> Any:
    """A :class:`LatencyTable` or :class:`StructureLatencyTable` from its ``to_dict``."""
    return StructureLatencyTable.from_dict(d) if 'structures' in d else LatencyTable.from_dict(d)


def build_latency_table(space: GenomeSpace, measured: Dict[Genome, float]) -> LatencyTable:
    """The table from the latencies of :func:`probe_genomes` (``measured[probe] = ms``)."""
    missing = [p for p in probe_genomes(space) if tuple(p) not in measured]
    if missing:
        raise ValueError(f'{len(missing)} probe genomes not measured, e.g. {missing[0]}')
    zero = tuple([0] * space.num_genes)
    base = float(measured[zero])
    groups = _group_of(space)
    deltas = []
    for g, n in enumerate(space.choices):
        grp = groups[g]
        pos = grp.index(g)
        row = [0.0]
        for c in range(1, n):
            rest = _probe(space, grp[pos + 1], c) if pos + 1 < len(grp) else zero
            row.append(float(measured[_probe(space, g, c)]) - float(measured[rest]))
        deltas.append(row)
    return LatencyTable(base=base, deltas=deltas)


def prediction_errors(pairs: Iterable[Tuple[float, float]]) -> Optional[Dict[str, float]]:
    """Relative error ``|predicted - measured| / measured`` over (predicted, measured) pairs.

    Returns:
        ``{'n', 'mean_rel_error', 'max_rel_error', 'mean_signed_rel_error'}``, or None if empty.
    """
    rel = [(p - m) / m for p, m in pairs if m and p is not None]
    if not rel:
        return None
    return dict(n=len(rel), mean_rel_error=sum(abs(r) for r in rel) / len(rel),
                max_rel_error=max(abs(r) for r in rel),
                mean_signed_rel_error=sum(rel) / len(rel))
