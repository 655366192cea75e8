"""Latency-constrained evolutionary search (SparseViT's ``tools/search.py``), as a package.

``evolution``, ``spaces``, ``latency_table``, ``structures`` and ``log`` are pure (numpy / json
/ os only; ``spaces`` uses :mod:`mmsparse.ops`); ``host`` (imported on demand) connects them
to a config's Runner, latency measurement and ranks; :func:`run` (``run.py``) is the whole
search of ``tools/search.py`` as one call.
"""
from .evolution import (Candidate, EvaluationBudgetReached, EvolutionSearch, Genome, GenomeSpace,
                        NoFeasibleCandidateError, SearchResult, SearchSettings,
                        SearchSettingsError, candidate_key, canonical_json, rank_candidates)
from .latency_table import (LatencyTable, StructureLatencyTable, build_latency_table,
                            prediction_errors, probe_genomes, table_from_dict)
from .log import SearchLogLock, SearchLogWriter, header_mismatch, read_log
from .run import SearchOptions, SearchOutcome, run
from .spaces import (DEFAULT_KEEP_CANDIDATES, SEARCH_SPACES, JointSearchSpace, SearchSpace,
                     check_keep_candidates, joint_space, keep_ratio_space, min_keep_ratio,
                     register_space, space_for_backbone, window_ratio_space)
from .structures import StructureEntry, parse_structures

__all__ = ['Candidate', 'EvaluationBudgetReached', 'EvolutionSearch', 'Genome', 'GenomeSpace',
           'NoFeasibleCandidateError', 'SearchResult', 'SearchSettings', 'SearchSettingsError',
           'candidate_key', 'canonical_json', 'rank_candidates', 'LatencyTable',
           'build_latency_table', 'prediction_errors', 'probe_genomes', 'SearchLogWriter',
           'header_mismatch', 'read_log', 'DEFAULT_KEEP_CANDIDATES', 'SEARCH_SPACES',
           'SearchSpace', 'keep_ratio_space', 'register_space', 'space_for_backbone',
           'window_ratio_space', 'SearchLogLock', 'SearchOptions', 'SearchOutcome', 'run',
           'StructureLatencyTable', 'table_from_dict', 'JointSearchSpace', 'joint_space',
           'check_keep_candidates', 'min_keep_ratio', 'StructureEntry', 'parse_structures']
