"""FLOPs (multiply-accumulates, the OpenMMLab / fvcore convention) and parameter counts.

MMEngine's :class:`~mmengine.analysis.FlopAnalyzer` traces the model, so the count follows the
shapes the model really computes on: a token-pruned ViT that gathers 137 of 196 tokens is counted
with 137, a Swin that skips windows is counted with the windows it keeps. It has no handle for
``aten::scaled_dot_product_attention`` (mmpretrain 1.2's ViT attention), which it would count as 0;
:func:`sdpa_flop_jit` adds the two attention matmuls.
"""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from mmengine.analysis import FlopAnalyzer, parameter_count
from mmengine.analysis.jit_handles import get_shape
from torch import Tensor, nn

__all__ = ['FlopsResult', 'count_flops', 'sdpa_flop_jit']


def sdpa_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """MACs of ``scaled_dot_product_attention(q, k, v, ...)``: ``q @ k^T`` plus ``attn @ v``.

    Shapes: q (..., Nq, D), k (..., Nk, D), v (..., Nk, Dv); leading dims are batch and heads.
    """
    q, k, v = (get_shape(x) for x in inputs[:3])
    batch = 1
    for d in q[:-2]:
        batch *= d
    nq, d = q[-2], q[-1]
    nk, dv = k[-2], v[-1]
    return batch * nq * nk * (d + dv)


@dataclass
class FlopsResult:
    """FLOPs (MACs) and parameters of one traced forward.

    Attributes:
        flops: total multiply-accumulates.
        params: number of parameters of the analysed module.
        by_module: MACs per submodule name ('' is the whole module).
        by_operator: MACs per operator ('linear', 'scaled_dot_product_attention', ...).
        unsupported_ops: ops the tracer met but could not count, with how often.
    """
    flops: int
    params: int
    by_module: Dict[str, int] = field(default_factory=dict)
    by_operator: Dict[str, int] = field(default_factory=dict)
    unsupported_ops: Dict[str, int] = field(default_factory=dict)

    @property
    def gflops(self) -> float:
        return self.flops / 1e9

    @property
    def mparams(self) -> float:
        return self.params / 1e6


def count_flops(module: nn.Module, inputs: Union[Tensor, Tuple[Any, ...]]) -> FlopsResult:
    """Trace ``module(*inputs)`` once in eval mode and count its MACs and parameters.

    Args:
        module: the module to analyse; it is put in eval mode for the trace, and afterwards every
            submodule gets back its own mode (a wrapper built for the trace is in training mode
            while the model it wraps is in eval mode: restoring the wrapper's flag recursively
            would leave the model training).
        inputs: a tensor or a tuple of the module's positional inputs, e.g. (B, 3, H, W).
    """
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            analyzer = FlopAnalyzer(module, inputs)
            analyzer.set_op_handle(**{'aten::scaled_dot_product_attention': sdpa_flop_jit})
            analyzer.unsupported_ops_warnings(False)
            analyzer.uncalled_modules_warnings(False)
            analyzer.tracer_warnings('none')
            total = analyzer.total()
            by_module = dict(analyzer.by_module())
            by_operator = dict(analyzer.by_operator())
            unsupported = dict(analyzer.unsupported_ops())
    finally:
        for m, training in modes:
            m.training = training
    return FlopsResult(flops=int(total), params=int(parameter_count(module)['']),
                       by_module=by_module, by_operator=by_operator,
                       unsupported_ops=unsupported)
