"""Deployment: ONNX export of the inference part of a model and its check in ONNX Runtime
(:mod:`mmsparse.deploy.onnx`; ``tools/deployment/pytorch2onnx.py`` is its command line).

Needs the ``[deploy]`` extra (onnx, onnxscript, onnx_ir, onnxruntime); importing this package
does not import them: each function that needs one names the extra when it is missing.
"""
from .onnx import (DEFAULT_OPSET, MIN_OPSET, RTOL, ExportError, ExportReport, InputCheck,
                   WithKeptIndices, check_exportable, check_input_shape, check_opset,
                   drop_outputs, export_model, max_opset, export_onnx, export_part, kept_indices,
                   max_relative_error, onnx_ops, ort_session, real_images,
                   recording_kept_indices, require_onnx, require_onnxruntime, run_session,
                   same_kept, torch_outputs, verify_export)

__all__ = ['DEFAULT_OPSET', 'MIN_OPSET', 'RTOL', 'ExportError', 'ExportReport', 'InputCheck',
           'WithKeptIndices', 'check_exportable', 'check_input_shape', 'check_opset',
           'drop_outputs', 'export_model', 'max_opset', 'export_onnx', 'export_part',
           'kept_indices', 'max_relative_error', 'onnx_ops', 'ort_session', 'real_images',
           'recording_kept_indices', 'require_onnx', 'require_onnxruntime', 'run_session',
           'same_kept', 'torch_outputs', 'verify_export']
