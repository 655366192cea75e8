"""Export the inference model a config builds to ONNX, optionally checked in ONNX Runtime.

    python tools/deployment/pytorch2onnx.py CONFIG CHECKPOINT [--part backbone|model]
        [--shape H W] [--batch-size N | --dynamic-batch] [--opset N] [--out FILE] [--verify]
        [--cfg-options k=v ...]

The exported part is the one FLOPs and latency measure (``--part``, as in
``tools/analysis_tools/measure_latency.py``): ``model`` = a classifier's logits (a segmentor's
``mode='tensor'`` output), ``backbone`` = the backbone's features (the part to export of a
detector). The checkpoint loads as in ``tools/test.py``: a training or compacted checkpoint
(``tools/compact.py --method svite|uvc`` writes a config + checkpoint of the compact ViT to
export), or ``sparse://FILE`` of ``tools/compact.py --method sparse``, whose weights end up as
dense tensors in the graph (zeros included): no speed-up is claimed from unstructured sparsity,
and the summary line says so.

- ``--shape H W``: the input size (default: the backbone's ``img_size``, else 224); multiples of
  the patch size. ``--batch-size N``: a static batch (default 1); ``--dynamic-batch``: a symbolic
  batch dimension. ``--opset``: ONNX opset (18..23 with torch 2.13; default 23, where
  ``F.scaled_dot_product_attention`` is one ONNX ``Attention`` node).
- ``--verify``: run the file in ONNX Runtime on random images and on real ones (the config's test
  set through its test pipeline and data preprocessor, resized to ``--shape``) and compare with
  PyTorch: max relative error ``max_o max|ort_o - torch_o| / max|torch_o|`` over the outputs
  must be <= 1e-4; token and window models must keep the same tokens / windows (checked with a
  verification graph that also outputs the kept indices; the written file is that graph without
  them). Exit status 1 if a check fails; exactly tied scores (identical tokens of an untrained
  model) may be broken differently by torch and ONNX Runtime, and the line then gives the
  fraction of kept indices both keep.

Prints one line: file, opset, input shape, part, max relative errors, kept-index check. The work
is :func:`mmsparse.deploy.export_model`.
"""
import argparse
import os.path as osp
import sys

from mmsparse.utils import UserError, build_model, load_config, run_cli
from mmsparse.utils.cli import add_config_args, check_checkpoint, input_size


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', help='checkpoint file (or sparse://FILE)')
    parser.add_argument('--part', choices=['model', 'backbone'], default='model')
    parser.add_argument('--shape', type=int, nargs='+', default=None, metavar='N',
                        help='input size H [W] (default: the backbone img_size, else 224)')
    batch = parser.add_mutually_exclusive_group()
    batch.add_argument('--batch-size', type=int, default=1, help='static batch size')
    batch.add_argument('--dynamic-batch', action='store_true',
                       help='a symbolic batch dimension')
    parser.add_argument('--opset', type=int, default=None, help='ONNX opset (18..23, default 23)')
    parser.add_argument('--out', help='the .onnx file (default: '
                                      'work_dirs/<config>/<config>_<part>.onnx)')
    parser.add_argument('--verify', action='store_true',
                        help='compare with PyTorch in ONNX Runtime (random and real images)')
    add_config_args(parser)
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args()
    from mmsparse.deploy import DEFAULT_OPSET, check_opset, export_model, require_onnxruntime
    opset = check_opset(DEFAULT_OPSET if args.opset is None else args.opset)
    if args.batch_size < 1:
        raise UserError(f'--batch-size must be >= 1, got {args.batch_size}')
    if args.verify:
        require_onnxruntime()
    cfg = load_config(args.config, args.cfg_options)
    check_checkpoint(args.checkpoint)
    shape = input_size(cfg, args.shape, '--shape')
    name = osp.splitext(osp.basename(args.config))[0]
    out = args.out or osp.join('work_dirs', name, f'{name}_{args.part}.onnx')
    model = build_model(cfg, args.checkpoint)
    report = export_model(cfg, model, out, part=args.part, shape=shape,
                          batch_size=args.batch_size, dynamic_batch=args.dynamic_batch,
                          opset=opset, verify=args.verify, checkpoint=args.checkpoint)
    print(report.summary())
    if args.verify and not report.passed:
        print(f'error: verification failed: {report.failure()}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    run_cli(main)
