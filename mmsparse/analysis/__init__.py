from .flops import FlopsResult, count_flops, sdpa_flop_jit
from .latency import LatencyResult, measure_latency, thread_info, trimmed_mean
from .model_parts import PARTS, make_images, model_kind, part_callable, part_module

__all__ = ['FlopsResult', 'count_flops', 'sdpa_flop_jit', 'LatencyResult', 'measure_latency',
           'thread_info', 'trimmed_mean', 'PARTS', 'make_images', 'model_kind', 'part_callable',
           'part_module']
