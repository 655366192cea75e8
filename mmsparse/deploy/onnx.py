"""ONNX export of the inference model a config builds, and its check in ONNX Runtime.

What is exported is the part of the model that FLOPs counting and latency measurement use
(:func:`mmsparse.analysis.part_module`): ``backbone`` (``model.backbone(images)``) or ``model``
(a classifier's logits, a segmentor's ``mode='tensor'`` output), in eval mode, float32, CPU.
Each method exports its inference path:

- a dense mmpretrain ViT, a compact ViT (:class:`~mmsparse.models.CompactVisionTransformer`,
  written by ``tools/compact.py --method svite|uvc``) and an S²ViTE / SViTE model: dense
  MatMul / Softmax graphs (``F.scaled_dot_product_attention`` is written as MatMul + Softmax at
  opsets < 23 and as ONNX ``Attention`` from opset 23);
- DynamicViT: the fixed keep counts of inference, as ``TopK`` + ``GatherElements`` (static
  shapes; the token counts are constants of the graph);
- SViTE+: the token selector's ``TopK`` (+ the sort into spatial order) and gather;
- SparseViT (:class:`~mmsparse.models.SparseSwinTransformer`): window scores, a static number
  of kept windows per block (``TopK``), ``Gather`` of the kept windows' tokens and ``ScatterND``
  back into the map;
- an SViTE ``sparse://`` checkpoint: its weights are stored as *dense* tensors (zeros included):
  ONNX Runtime runs dense kernels, so no speed-up is claimed from unstructured sparsity.

Models that only train (UVC's gated :class:`~mmsparse.models.UVCVisionTransformer`, which must
be compacted first; DynamicViT's random-selection baseline) raise :class:`ExportError`.

Exporter: ``torch.onnx.export(..., dynamo=True)`` (``torch.export`` in non-strict mode, then
onnxscript's translation and graph optimisation). It handles SDPA (one ``Attention`` node from
opset 23, the default), TopK / gather and ``index_copy`` (-> ``ScatterND``) and a symbolic batch
dimension (``dynamic_batch``). torch's TorchScript exporter (``dynamo=False``) still exists in
torch 2.13 but is deprecated, writes at most opset 20 (no ``Attention``) and adds shape
arithmetic (``Shape`` / ``ConstantOfShape`` / ``Where``, ``ScatterElements``). Opsets below
:data:`MIN_OPSET` are refused: the dynamo exporter has implementations from opset 18 only and
would convert down with onnx's version converter (which fails at opset 11 already).

Verification (:func:`verify_export`) runs the ONNX file in ONNX Runtime and the same part in
PyTorch on the same inputs (random images, and real images of the config's test set) and reports
per input the largest relative error, ``max_o max|ort_o - torch_o| / max|torch_o|`` over the
outputs ``o`` (each output normalised by its own largest magnitude). For token and window
models the sets of kept indices are compared exactly (per sample; their order changes no output
and near-equal scores may come out of the two TopKs in either order), through a verification
graph: the part's outputs
followed by the kept indices (``kept0`` ...), exported once; the shipped file is that graph with
the index outputs (and the nodes only they need) removed (:func:`export_part`), so it computes
exactly what was verified and pays nothing for the check. Exact ties at the boundary of the
kept set are the one source of a difference there: identical tokens (the blank background
patches of Fashion-MNIST in a model whose position embedding is still zero, e.g. untrained)
have identical scores, which ``torch.topk`` and ONNX Runtime's ``TopK`` may break
differently; :class:`InputCheck` then reports the fraction of kept indices both keep
(``kept_shared``), and the check fails.
"""
import contextlib
import io
import os
import os.path as osp
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from mmsparse.analysis.model_parts import PARTS, make_images, model_kind, part_module
from mmsparse.errors import ConfigError, StackError

__all__ = ['ExportError', 'MIN_OPSET', 'DEFAULT_OPSET', 'RTOL', 'check_exportable',
           'check_input_shape', 'check_opset', 'max_opset', 'export_onnx', 'export_part',
           'ort_session', 'run_session', 'torch_outputs', 'max_relative_error', 'kept_indices',
           'recording_kept_indices', 'WithKeptIndices', 'drop_outputs', 'real_images',
           'InputCheck', 'verify_export', 'ExportReport', 'export_model', 'onnx_ops',
           'require_onnx', 'require_onnxruntime', 'same_kept']

MIN_OPSET = 18
# 23: F.scaled_dot_product_attention becomes one ONNX Attention node (ONNX Runtime >= 1.23 has a
# CPU kernel for it), faster in ONNX Runtime than opset 18's MatMul + Softmax + MatMul
DEFAULT_OPSET = 23
RTOL = 1e-4  # largest relative error accepted by verify_export (float32)
INPUT_NAME = 'images'
HOW_TO_INSTALL = "pip install 'mmsparse[deploy]'"


class ExportError(ConfigError):
    """A model, part, shape or opset that cannot be exported (one ``error:`` line in the tools)."""


# ---- what can be exported -----------------------------------------------------------------------
def check_exportable(model: nn.Module, part: str) -> None:
    """Refuse models whose inference is not what they deploy as, and parts that do not export.

    Raises:
        ExportError: naming the model and what to export instead.
    """
    if part not in PARTS:
        raise ExportError(f'--part {part}: choose one of {", ".join(PARTS)}')
    from mmsparse.models.dynamicvit import DynamicVisionTransformer
    from mmsparse.models.uvc import UVCVisionTransformer
    backbone = getattr(model, 'backbone', None)
    if isinstance(backbone, UVCVisionTransformer):
        raise ExportError(
            f'model.backbone.type: UVCVisionTransformer (mode={backbone.mode!r}) is UVC\'s gated '
            f'training model (masks and gates over the full-size weights) and has no export '
            f'path; compact it first: tools/compact.py CONFIG CHECKPOINT --method uvc --out DIR, '
            f'then export DIR/<config>_compact.py with DIR/<config>_compact.pth')
    if isinstance(backbone, DynamicVisionTransformer) and backbone.selector == 'random':
        raise ExportError("model.backbone.selector: 'random' (the random-dropping baseline) "
                          'draws its tokens at random at inference: no deterministic graph to '
                          "export; export a selector='predictor' model")
    if part == 'backbone' and backbone is None:
        raise ExportError(f'--part backbone: {type(model).__name__} has no backbone; use '
                          f'--part model')
    if part == 'model' and model_kind(model) == 'detector':
        # (mmdet 3.3's tensor forward of a two-stage detector: RPN proposals, NMS, RoI heads;
        # torch.export fails in it, here on an import of the removed mmdet.core)
        raise ExportError(f'--part model: the {type(model).__name__} detector\'s tensor forward '
                          f'(proposals, NMS, RoI heads) does not export with torch.export; '
                          f'export --part backbone')


def _patch_stride(model: nn.Module) -> Optional[Tuple[int, int]]:
    """The patch embedding's stride (the patch size) of the model's backbone, if it has one."""
    backbone = getattr(model, 'backbone', model)
    proj = getattr(getattr(backbone, 'patch_embed', None), 'projection', None)
    stride = getattr(proj, 'stride', None)
    if stride is None:
        return None
    return (stride, stride) if isinstance(stride, int) else tuple(stride)


def check_input_shape(model: nn.Module, shape: Sequence[int]) -> Tuple[int, int]:
    """(H, W), each a positive multiple of the backbone's patch size.

    A shape that is not a multiple would be zero-padded by the patch embedding: the graph would
    compute on pad pixels that no training image had.

    Raises:
        ExportError: naming ``--shape`` and the patch size.
    """
    h, w = (int(s) for s in shape)
    if h < 1 or w < 1:
        raise ExportError(f'--shape {h} {w}: H and W must be >= 1')
    stride = _patch_stride(model)
    if stride and (h % stride[0] or w % stride[1]):
        name = type(getattr(model, 'backbone', model)).__name__
        hint = f'{max(1, h // stride[0]) * stride[0]} {max(1, w // stride[1]) * stride[1]}'
        raise ExportError(f'--shape {h} {w} is not divisible by the patch size '
                          f'{stride[0]}x{stride[1]} of {name}; give multiples of it, e.g. '
                          f'--shape {hint}')
    return h, w


def require_onnx():
    """The onnx module (onnxscript checked too); a :class:`StackError` naming the extra if
    missing."""
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch.onnx.export(dynamo=True) writes through it)
    except ImportError as e:
        raise StackError(f'ONNX export needs the packages onnx and onnxscript ({e}); '
                         f'{HOW_TO_INSTALL}') from None
    return onnx


def require_onnxruntime():
    """The onnxruntime module; a :class:`StackError` naming the extra if missing."""
    try:
        import onnxruntime
    except ImportError as e:
        raise StackError(f'--verify runs the graph in ONNX Runtime, which is not installed ({e});'
                         f' {HOW_TO_INSTALL}') from None
    return onnxruntime


def max_opset() -> int:
    """The newest opset both torch's exporter writes and the installed onnx knows."""
    newest = require_onnx().defs.onnx_opset_version()
    try:  # torch's own bound (23 in torch 2.13); not public API, hence the fallback
        from torch.onnx._constants import ONNX_MAX_OPSET
    except ImportError:
        return newest
    return min(newest, ONNX_MAX_OPSET)


def check_opset(opset: int) -> int:
    """An opset the exporter writes and the installed onnx knows.

    Raises:
        ExportError: outside :data:`MIN_OPSET` .. :func:`max_opset`.
    """
    newest = max_opset()
    if opset < MIN_OPSET:
        raise ExportError(f'--opset {opset} is too old: torch {torch.__version__}\'s ONNX exporter '
                          f'writes this graph\'s ops (LayerNormalization, TopK, ScatterND, '
                          f'GatherElements) from opset {MIN_OPSET} only (LayerNormalization alone '
                          f'needs 17); choose --opset {MIN_OPSET}..{newest}')
    if opset > newest:
        raise ExportError(f'--opset {opset} is newer than torch {torch.__version__}\'s exporter '
                          f'and the installed onnx write (at most {newest}); choose --opset '
                          f'{MIN_OPSET}..{newest}')
    return opset


# ---- export -------------------------------------------------------------------------------------
def _flatten(out: Any) -> List[Tensor]:
    """The tensors of a (nested) tuple / list / dict output, in the exporter's order."""
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flatten(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _flatten(v)]
    raise ExportError(f'cannot export an output of type {type(out).__name__} (tensors only)')


def torch_outputs(module: nn.Module, images: Tensor) -> List[np.ndarray]:
    """``module(images)`` in PyTorch (no grad), its tensors flattened, as numpy arrays."""
    with torch.no_grad():
        return [t.detach().cpu().numpy() for t in _flatten(module(images))]


def _output_names(model: nn.Module, part: str, num_outputs: int) -> List[str]:
    if part == 'model' and model_kind(model) == 'classifier' and num_outputs == 1:
        return ['logits']
    return ['output'] if num_outputs == 1 else [f'output{i}' for i in range(num_outputs)]


def export_onnx(module: nn.Module, images: Tensor, path: str, opset: int = DEFAULT_OPSET,
                dynamic_batch: bool = False,
                output_names: Optional[Sequence[str]] = None) -> str:
    """Export ``module(images)`` to the ONNX file ``path``; returns ``path``.

    Args:
        module: in eval mode, one tensor input.
        images: example input (B, C, H, W); the graph has its shape, except a symbolic batch
            dimension ``batch`` with ``dynamic_batch`` (traced at batch >= 2, so that torch.export
            does not specialise a batch of 1).
        path: the .onnx file (its folder is created).
        opset: ONNX opset (:func:`check_opset`).
        dynamic_batch: make dim 0 of the input and outputs symbolic.
        output_names: graph output names (default ``output``, ``output0`` ...).
    """
    require_onnx()
    check_opset(opset)
    if dynamic_batch and images.shape[0] < 2:
        images = images.repeat(2, 1, 1, 1)
    dynamic_shapes = ({0: torch.export.Dim('batch', min=1, max=1 << 16)}, ) \
        if dynamic_batch else None
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    size = sum(p.numel() * p.element_size() for p in module.parameters())
    log = io.StringIO()
    # the exporter prints its progress and warns about pytree internals of the pinned stack
    try:
        with torch.no_grad(), contextlib.redirect_stdout(log), warnings.catch_warnings():
            warnings.simplefilter('ignore')
            torch.onnx.export(
                module, (images, ), path, input_names=[INPUT_NAME],
                output_names=list(output_names) if output_names else None,
                opset_version=opset, dynamo=True, dynamic_shapes=dynamic_shapes,
                # one self-contained file below protobuf's 2 GiB limit
                external_data=size > (1 << 30), optimize=True, verbose=False)
    except Exception as e:  # noqa: BLE001  (torch.export / onnxscript raise many types)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        tail = log.getvalue().strip().splitlines()[-1:] or ['']
        raise ExportError(f'torch.onnx.export of {type(module).__name__} failed: '
                          f'{type(e).__name__}: {first}'
                          + (f' (exporter: {tail[0]})' if tail[0] else '')) from e
    return path


def export_part(model: nn.Module, part: str, images: Tensor, path: str,
                opset: int = DEFAULT_OPSET, dynamic_batch: bool = False,
                verification_path: Optional[str] = None) -> str:
    """Export ``part`` ('backbone' or 'model', :func:`mmsparse.analysis.part_module`) of a
    built model (eval mode) for ``images`` (B, C, H, W) to ``path``; returns ``path``.

    A model that keeps a subset of its tokens / windows is exported once as the verification
    graph (:class:`WithKeptIndices`: the part's outputs, then the kept indices ``kept0`` ...),
    written to ``verification_path`` (default: a temporary file, removed), and ``path`` is that
    graph without the index outputs and the nodes only they need (:func:`drop_outputs`): the
    shipped graph computes exactly what was verified and pays nothing for the check.
    """
    check_exportable(model, part)
    check_input_shape(model, images.shape[-2:])
    module = part_module(model, part, images)
    backbone = getattr(model, 'backbone', None)
    with recording_kept_indices(backbone) as kept:
        num_outputs = len(torch_outputs(module, images[:1]))
        num_kept = len(kept() or [])
    names = _output_names(model, part, num_outputs)
    if not num_kept:
        return export_onnx(module, images, path, opset, dynamic_batch, names)
    tmp = None
    if verification_path is None:
        tmp = tempfile.mkdtemp(prefix='mmsparse_onnx_')
        verification_path = osp.join(tmp, 'verification.onnx')
    try:
        export_onnx(WithKeptIndices(module, backbone), images, verification_path, opset,
                    dynamic_batch, names + [f'kept{i}' for i in range(num_kept)])
        return drop_outputs(verification_path, path, names)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def onnx_ops(path: str) -> Dict[str, int]:
    """How often each ONNX op type occurs in the main graph of ``path``."""
    onnx = require_onnx()
    counts: Dict[str, int] = {}
    for node in onnx.load(path, load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


# ---- ONNX Runtime -------------------------------------------------------------------------------
def ort_session(path: str, threads: int = 1):
    """An ONNX Runtime CPU session of ``path`` with ``threads`` intra-op threads (one inter-op
    thread, all graph optimisations), e.g. for timing against ``torch.set_num_threads``."""
    ort = require_onnxruntime()
    if threads < 1:
        raise ExportError(f'threads must be >= 1, got {threads}')
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(path, sess_options=opts, providers=['CPUExecutionProvider'])
    except Exception as e:  # noqa: BLE001  (ORT raises its own untyped errors)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f'onnxruntime {ort.__version__} cannot load {path}: {msg}') from None


def run_session(session, images: Tensor) -> List[np.ndarray]:
    """Run a session of one image input on ``images`` (B, C, H, W); its outputs in order."""
    name = session.get_inputs()[0].name
    return session.run(None, {name: images.detach().cpu().numpy().astype(np.float32)})


def max_relative_error(actual: Sequence[np.ndarray], expected: Sequence[np.ndarray]) -> float:
    """``max_o max|actual_o - expected_o| / max|expected_o|`` over the outputs ``o``.

    Each output is normalised by its own largest magnitude (a relative error that does not
    blow up at the near-zero entries of an output); an all-zero expected output counts its
    absolute error; a non-finite value in either gives ``inf``.
    """
    if len(actual) != len(expected):
        raise ValueError(f'{len(actual)} outputs against {len(expected)} expected')
    worst = 0.0
    for a, b in zip(actual, expected):
        if a.shape != b.shape:
            raise ValueError(f'output shape {a.shape} against expected {b.shape}')
        a, b = a.astype(np.float64), b.astype(np.float64)
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            return float('inf')  # a NaN / inf in either is never a match (max() skips NaN)
        scale = float(np.abs(b).max()) if b.size else 0.0
        err = float(np.abs(a - b).max()) if b.size else 0.0
        worst = max(worst, err / scale if scale > 0 else err)
    return worst


# ---- kept tokens / windows ----------------------------------------------------------------------
@contextlib.contextmanager
def recording_kept_indices(backbone: Optional[nn.Module]
                           ) -> Iterator[Callable[[], Optional[List[Tensor]]]]:
    """While open, the backbone records what its forward keeps; yields a function returning the
    indices of the last forward (None for a backbone that prunes nothing):

    - DynamicViT: per stage (B, K_k), the kept patch positions in the order kept;
    - SViTE+: (B, K), the kept patch positions in ascending order;
    - SparseViT: per pruned block (B, k), the kept windows, best first.
    """
    from mmsparse.models.dynamicvit import DynamicVisionTransformer
    from mmsparse.models.sparsevit import SparseSwinTransformer
    from mmsparse.models.svite import SViTEVisionTransformer
    if isinstance(backbone, DynamicVisionTransformer):
        before = backbone.kept_tokens
        backbone.record_kept_tokens(True)
        try:
            yield lambda: list(backbone.kept_tokens)
        finally:
            backbone.kept_tokens = before
    elif isinstance(backbone, SViTEVisionTransformer) and backbone.token_selector is not None:
        found: List[Tensor] = []

        def hook(module, args, out):
            found[:] = [out[1]]
        handle = backbone.token_selector.register_forward_hook(hook)
        try:
            yield lambda: list(found)
        finally:
            handle.remove()
    elif isinstance(backbone, SparseSwinTransformer) and not backbone.is_dense:
        recording = backbone.kept_windows is not None
        backbone.record_kept_windows(True)
        try:
            yield lambda: [w['indices'] for stage in backbone.kept_windows for w in stage]
        finally:
            backbone.record_kept_windows(recording)
    else:
        yield lambda: None


def kept_indices(backbone: nn.Module, images: Tensor) -> Optional[List[Tensor]]:
    """Run ``backbone`` on ``images``; what it keeps (:func:`recording_kept_indices`)."""
    with recording_kept_indices(backbone) as kept, torch.no_grad():
        backbone(images)
        return kept()


class WithKeptIndices(nn.Module):
    """A part module whose outputs are followed by the kept indices of its backbone: the
    verification graph (outputs ``kept0``, ``kept1`` ... after the part's own)."""

    def __init__(self, module: nn.Module, backbone: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.backbone = backbone
        self.training = module.training

    def forward(self, images: Tensor) -> Tuple[Tensor, ...]:
        with recording_kept_indices(self.backbone) as kept:
            outs = _flatten(self.module(images))
            return tuple(outs) + tuple(kept())


def drop_outputs(src: str, dst: str, keep: Sequence[str]) -> str:
    """Write ``src`` to ``dst`` with only the graph outputs ``keep`` and the nodes they need
    (the shipped graph from the verification graph); returns ``dst``."""
    import onnx_ir as ir
    from onnx_ir.passes.common import RemoveUnusedNodesPass, RemoveUnusedOpsetsPass
    model = ir.load(src)
    outputs = list(model.graph.outputs)
    missing = set(keep) - {o.name for o in outputs}
    if missing:
        raise ValueError(f'{src} has no outputs {sorted(missing)}')
    model.graph.outputs.clear()
    model.graph.outputs.extend(o for o in outputs if o.name in keep)
    RemoveUnusedNodesPass()(model)
    RemoveUnusedOpsetsPass()(model)
    ir.save(model, dst)
    return dst


# ---- inputs -------------------------------------------------------------------------------------
def real_images(cfg, model: nn.Module, batch_size: int, shape: Sequence[int]) -> Tensor:
    """The first ``batch_size`` images of the config's test set (cycled if it has fewer), through
    its test pipeline and the model's data preprocessor (normalised, padded as in testing), then
    resized bilinearly to ``shape`` if the pipeline gives another size: (B, C, H, W).

    Raises:
        DataNotFoundError: if the test set's ``data_root`` does not exist.
    """
    import torch.nn.functional as F
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import DATASETS

    from mmsparse.utils.cli import UserError, check_data_roots
    check_data_roots(cfg)
    loader = cfg.get('test_dataloader') or cfg.get('val_dataloader')
    if not loader or not loader.get('dataset'):
        raise UserError('--verify: the config has no test_dataloader.dataset to take real '
                        'images from')
    dataset = DATASETS.build(loader['dataset'])
    if len(dataset) == 0:
        raise UserError('--verify: the config\'s test set is empty')
    samples = [dataset[i % len(dataset)] for i in range(batch_size)]
    with torch.no_grad():
        images = model.data_preprocessor(pseudo_collate(samples), False)['inputs']
    images = images.float()
    if tuple(images.shape[-2:]) != tuple(shape):
        images = F.interpolate(images, size=tuple(shape), mode='bilinear', align_corners=False)
    return images


# ---- verification -------------------------------------------------------------------------------
@dataclass
class InputCheck:
    """One input of :func:`verify_export`.

    Attributes:
        name: 'random' or 'real' (and the batch size for a dynamic-batch graph).
        shape: the input shape.
        max_rel_err: :func:`max_relative_error` of the ONNX Runtime outputs.
        kept_equal: whether the verification graph kept the same indices as PyTorch (None: the
            model keeps everything).
        kept_sets: how many index tensors were compared.
        kept_shared: the fraction of kept indices that both keep (per row, as sets; 1.0 when
            only the order differs). Below 1 for near-tied scores (e.g. an untrained predictor,
            whose scores differ by less than float32 rounding), the check fails.
    """
    name: str
    shape: Tuple[int, ...]
    max_rel_err: float
    kept_equal: Optional[bool] = None
    kept_sets: int = 0
    kept_shared: Optional[float] = None


def verify_export(model: nn.Module, part: str, path: str, inputs: Dict[str, Tensor],
                  threads: int = 1, verification_path: Optional[str] = None
                  ) -> List[InputCheck]:
    """Compare the ONNX file ``path`` (of ``part`` of ``model``) in ONNX Runtime with PyTorch.

    Args:
        model: the built model, eval mode.
        part: the exported part.
        path: the exported file (its outputs are compared).
        inputs: name -> images (B, C, H, W), each of a batch size the graph takes.
        threads: ONNX Runtime intra-op threads.
        verification_path: the verification graph of :func:`export_part` (its kept indices are
            compared exactly); None for a model that keeps everything.

    Returns:
        One :class:`InputCheck` per input.
    """
    session = ort_session(path, threads)
    probe = ort_session(verification_path, threads) if verification_path else None
    backbone = getattr(model, 'backbone', None)
    checks = []
    for name, images in inputs.items():
        module = part_module(model, part, images)
        with recording_kept_indices(backbone) as kept:
            expected = torch_outputs(module, images)
            expected_kept = [t.cpu().numpy() for t in kept() or []]
        check = InputCheck(name, tuple(images.shape),
                           max_relative_error(run_session(session, images), expected))
        if expected_kept and probe is None:
            raise ExportError(f'{_class_names(model)} keeps a subset of its tokens / windows: '
                              f'its kept indices need the verification graph of export_part '
                              f'(verification_path), none was given')
        if probe is not None:
            got = run_session(probe, images)[len(expected):]
            check.kept_sets = len(expected_kept)
            check.kept_equal = same_kept(got, expected_kept)
            check.kept_shared = _shared_fraction(got, expected_kept)
        checks.append(check)
    return checks


def same_kept(got: Sequence[np.ndarray], expected: Sequence[np.ndarray]) -> bool:
    """Whether each (B, K) index tensor keeps, per sample, the same set as expected.

    Sets, not sequences: the order among kept tokens / windows changes no output (attention is
    permutation-equivariant; windows are scattered back to where they were taken), and
    near-equal scores (closer than the float32 rounding of two kernels) may come out of
    ``torch.topk`` and ONNX Runtime's ``TopK`` in either order.
    """
    return len(got) == len(expected) and all(
        g.shape == e.shape and bool((np.sort(g, axis=-1) == np.sort(e, axis=-1)).all())
        for g, e in zip(got, expected))


def _shared_fraction(got: Sequence[np.ndarray], expected: Sequence[np.ndarray]) -> float:
    """Of the (B, K) kept indices of each expected set, the fraction that ``got`` keeps too."""
    shared = total = 0
    for g, e in zip(got, expected):
        if g.shape != e.shape:
            total += e.size
            continue
        for gr, er in zip(g.reshape(len(g), -1), e.reshape(len(e), -1)):
            shared += len(np.intersect1d(gr, er))
            total += er.size
    total += sum(e.size for e in expected[len(got):])
    return shared / total if total else 1.0


# ---- the whole export of a config ---------------------------------------------------------------
@dataclass
class ExportReport:
    """What :func:`export_model` wrote and checked.

    Attributes:
        file: the .onnx file.
        opset: its opset.
        input_shape: the traced input shape; dim 0 is symbolic with ``dynamic_batch``.
        dynamic_batch: whether the batch dimension is symbolic.
        part: 'backbone' or 'model'.
        model: the model's and backbone's class names.
        ops: op type -> count in the graph.
        checks: the :class:`InputCheck` of each verified input (empty without verification).
        rtol: the largest relative error accepted.
        notes: what the reader must know (e.g. dense weights of a ``sparse://`` checkpoint).
    """
    file: str
    opset: int
    input_shape: Tuple[int, ...]
    dynamic_batch: bool
    part: str
    model: str
    ops: Dict[str, int] = field(default_factory=dict)
    checks: List[InputCheck] = field(default_factory=list)
    rtol: float = RTOL
    notes: List[str] = field(default_factory=list)

    @property
    def max_rel_err(self) -> Optional[float]:
        return max((c.max_rel_err for c in self.checks), default=None)

    @property
    def kept_equal(self) -> Optional[bool]:
        found = [c.kept_equal for c in self.checks if c.kept_equal is not None]
        return all(found) if found else None

    @property
    def passed(self) -> bool:
        """Verified, every error within ``rtol`` and every kept-index set equal."""
        return bool(self.checks) and self.max_rel_err <= self.rtol and self.kept_equal is not False

    def failure(self) -> str:
        """What failed, in words ('' when :attr:`passed`)."""
        if not self.checks:
            return 'nothing was verified'
        what = [f'{c.name} max rel err {c.max_rel_err:.2e} > {self.rtol:g}'
                for c in self.checks if not c.max_rel_err <= self.rtol]
        what += [f'{c.name} kept indices differ ({c.kept_shared:.2%} shared)'
                  for c in self.checks if c.kept_equal is False]
        return '; '.join(what)

    def summary(self) -> str:
        """One line: file, opset, input shape, part, errors and kept-index check."""
        shape = list(self.input_shape)
        if self.dynamic_batch:
            shape[0] = 'batch'
        line = (f'{self.file}: opset {self.opset}, input {INPUT_NAME} '
                f'({", ".join(str(s) for s in shape)}), part {self.part} ({self.model})')
        if self.checks:
            errs = ', '.join(f'{c.name} {c.max_rel_err:.2e}' for c in self.checks)
            line += f', max rel err {errs} (limit {self.rtol:g})'
            kept = [c for c in self.checks if c.kept_equal is not None]
            if kept:
                sets = kept[0].kept_sets
                what = 'equal' if self.kept_equal else 'DIFFER ({:.2%} shared)'.format(
                    min(c.kept_shared for c in kept))
                line += (f', kept indices {what} ({sets} set{"s" if sets != 1 else ""} x '
                         f'{len(kept)} inputs)')
            else:
                line += ', kept indices n/a (nothing pruned)'
        else:
            line += ', not verified'
        return line + ''.join(f'; {n}' for n in self.notes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(max_rel_err=self.max_rel_err, kept_equal=self.kept_equal,
                 passed=self.passed if self.checks else None)
        return d


def _class_names(model: nn.Module) -> str:
    backbone = getattr(model, 'backbone', None)
    return type(model).__name__ + (f' / {type(backbone).__name__}' if backbone is not None else '')


def export_model(cfg, model: nn.Module, path: str, part: str = 'model',
                 shape: Sequence[int] = (224, 224), batch_size: int = 1,
                 dynamic_batch: bool = False, opset: int = DEFAULT_OPSET, verify: bool = False,
                 checkpoint: Optional[str] = None, threads: int = 1,
                 seed: int = 0) -> ExportReport:
    """Export ``part`` of the built ``model`` of ``cfg`` to ``path`` and optionally verify it.

    Args:
        cfg: the model's config (real images for verification come from its test set).
        model: built from ``cfg`` (:func:`mmsparse.utils.build_model`), eval mode, CPU.
        path: the .onnx file to write.
        part: 'backbone' or 'model'.
        shape: (H, W), multiples of the patch size.
        batch_size: the graph's batch (the traced batch with ``dynamic_batch``).
        dynamic_batch: a symbolic batch dimension.
        opset: ONNX opset (>= :data:`MIN_OPSET`).
        verify: compare with PyTorch in ONNX Runtime on random and real images (and, with
            ``dynamic_batch``, random images at a second batch size).
        checkpoint: the loaded checkpoint (only named in the notes).
        threads: ONNX Runtime intra-op threads of the verification.
        seed: seed of the random images.
    """
    check_opset(opset)
    check_exportable(model, part)
    h, w = check_input_shape(model, shape)
    if batch_size < 1:
        raise ExportError(f'--batch-size must be >= 1, got {batch_size}')
    if verify:
        require_onnxruntime()  # before the export: a missing onnxruntime is found at once
    channels = cfg.model.get('backbone', {}).get('in_channels', 3)
    images = make_images(batch_size, (h, w), channels, seed=seed)
    inputs = {'random': images}
    if verify:  # the real images first: a missing test set is found before the export
        if dynamic_batch:
            inputs[f'random@{batch_size + 1}'] = make_images(
                batch_size + 1, (h, w), channels, seed=seed + 1)
        inputs['real'] = real_images(cfg, model, batch_size, (h, w))
    tmp = tempfile.mkdtemp(prefix='mmsparse_onnx_')
    verification_path = osp.join(tmp, 'verification.onnx')
    try:
        export_part(model, part, images, path, opset, dynamic_batch, verification_path)
        report = _report(model, path, part, images, batch_size, dynamic_batch, opset,
                         checkpoint)
        if verify:
            report.checks = verify_export(
                model, part, path, inputs, threads,
                verification_path if osp.exists(verification_path) else None)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def _report(model: nn.Module, path: str, part: str, images: Tensor, batch_size: int,
            dynamic_batch: bool, opset: int, checkpoint: Optional[str]) -> ExportReport:
    _, channels, h, w = images.shape
    traced = (max(batch_size, 2) if dynamic_batch else batch_size, channels, h, w)
    report = ExportReport(file=path, opset=opset, input_shape=traced, dynamic_batch=dynamic_batch,
                          part=part, model=_class_names(model), ops=onnx_ops(path))
    if checkpoint and checkpoint.startswith('sparse://'):
        report.notes.append('weights of the sparse:// checkpoint are dense tensors in the graph '
                            '(zeros stored; ONNX Runtime runs dense kernels: no speed-up from '
                            'unstructured sparsity)')
    return report
