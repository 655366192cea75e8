"""Test (and evaluate) a checkpoint on a config's test set, with mmpretrain 1.2's flags.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE [--out-item pred|metrics]]
        [--show-dir DIR] [--show] [--interval N] [--wait-time S] [--tta] [--amp]
        [--no-pin-memory] [--cfg-options k=v ...] [--launcher none|pytorch|slurm|mpi]

- ``--out FILE``: the predictions (``--out-item pred``, the default), one dict per test sample
  in a ``.pkl`` file (MMEngine's ``DumpResults``; mmdet's ``DumpDetResults`` for a detector),
  or the metrics (``--out-item metrics``; ``.json``, ``.yaml`` or ``.pkl``).
- ``--show-dir DIR`` / ``--show``: draw the predictions through the config's
  ``default_hooks.visualization`` (else the host's hook: mmpretrain ``VisualizationHook``, which
  draws every ``--interval``-th image; mmdet ``DetVisualizationHook`` and mmseg
  ``SegVisualizationHook``, which draw every test image). Pictures go to ``DIR`` (mmseg's hook:
  ``DIR/vis_data/vis_image``).
- ``--tta``: test-time augmentation with the config's ``tta_model`` and ``tta_pipeline``.
- ``--amp``: test under autocast (float16 on a GPU, bfloat16 on CPU): ``test_cfg.fp16=True``.
"""
import argparse
import inspect
import os.path as osp

from mmsparse.utils import UserError, load_config, run_cli
from mmsparse.utils.cli import (add_config_args, build_runner, check_checkpoint,
                                 config_model_kind, parse_tool_args, registered_class,
                                 set_work_dir, setup_scope)

PRED_SUFFIXES = ('.pkl', '.pickle')
METRICS_SUFFIXES = ('.json', '.yaml', '.yml', '.pkl', '.pickle')
# The host's visualization hook and visualizer, by model kind (used where the config has none).
HOST_VISUALIZATION = {
    'classifier': ('mmpretrain.VisualizationHook', 'mmpretrain.UniversalVisualizer'),
    'detector': ('mmdet.DetVisualizationHook', 'mmdet.DetLocalVisualizer'),
    'segmentor': ('mmseg.SegVisualizationHook', 'mmseg.SegLocalVisualizer'),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test (and evaluate) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the directory to save the file containing '
                        'evaluation metrics')
    parser.add_argument('--out', help='the file to write the predictions (.pkl) or, with '
                        '--out-item metrics, the metrics (.json/.yaml/.pkl) to')
    parser.add_argument('--out-item', choices=['pred', 'metrics'],
                        help="what --out holds: 'pred' (the default) or 'metrics'")
    parser.add_argument('--show-dir', help='directory where the painted images are saved')
    parser.add_argument('--show', action='store_true',
                        help='show the prediction results in a window')
    parser.add_argument('--interval', type=int, default=1,
                        help='visualize every N-th sample (default 1; mmpretrain\'s hook)')
    parser.add_argument('--wait-time', type=float, default=2,
                        help='display time of every window, in seconds (default 2)')
    parser.add_argument('--tta', action='store_true',
                        help="test-time augmentation with the config's tta_model and "
                             'tta_pipeline')
    parser.add_argument('--amp', action='store_true',
                        help='test under automatic mixed precision (autocast)')
    parser.add_argument('--no-pin-memory', action='store_true',
                        help='disable pin_memory in the test dataloader')
    add_config_args(parser, launcher=True)
    return parse_tool_args(parser, argv)


def check_args(args) -> None:
    """Flag values that cannot work, refused before anything is built."""
    if args.out_item and not args.out:
        raise UserError(f'--out-item {args.out_item} needs --out FILE (the file to write to)')
    if args.out:
        if (args.out_item or 'pred') == 'pred':
            if not args.out.endswith(PRED_SUFFIXES):
                raise UserError(f'--out {args.out}: predictions are written as a pickle; give '
                                f'a .pkl or .pickle file (or --out-item metrics for the '
                                f'metrics as {"/".join(METRICS_SUFFIXES)})')
        elif not args.out.endswith(METRICS_SUFFIXES):
            raise UserError(f'--out {args.out}: --out-item metrics writes '
                            f'{"/".join(METRICS_SUFFIXES)} files')
    if args.interval < 1:
        raise UserError(f'--interval must be >= 1, got {args.interval}')
    if args.wait_time < 0:
        raise UserError(f'--wait-time must be >= 0, got {args.wait_time}')


def enable_visualization(cfg, args, kind: str) -> None:
    """Turn on the config's visualization hook (else the host's) for --show / --show-dir."""
    from mmengine.registry import HOOKS

    if cfg.get('default_hooks') is None:
        cfg.default_hooks = {}
    hooks = cfg.default_hooks
    if hooks.get('visualization') is None:
        if kind not in HOST_VISUALIZATION:
            raise UserError(f'--show/--show-dir: {args.config} has no '
                            f'default_hooks.visualization, and its model is no mmpretrain '
                            f'classifier, mmdet detector or mmseg segmentor whose hook could '
                            f'be used; add a visualization hook to default_hooks')
        hook_type, visualizer_type = HOST_VISUALIZATION[kind]
        hooks['visualization'] = dict(type=hook_type)
        if cfg.get('visualizer') is None:
            cfg.visualizer = dict(type=visualizer_type, vis_backends=[
                dict(type='LocalVisBackend', _scope_='mmengine')])
    hook = hooks['visualization']
    cls = registered_class(HOOKS, hook)
    if cls is None:
        raise UserError(f"default_hooks.visualization.type: '{hook.get('type')}' is not a "
                        f'registered hook')
    params = inspect.signature(cls.__init__).parameters
    named = set(params)
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    show_dir = osp.abspath(args.show_dir) if args.show_dir else None
    # switched on by mmpretrain's `enable` / mmdet's and mmseg's `draw`
    for key in ('enable', 'draw'):
        if key in named:
            hook[key] = True
    # drawing options (mmpretrain's hook passes `wait_time` on through its **kwargs)
    for key, value in (('show', args.show), ('wait_time', args.wait_time),
                       ('interval', args.interval)):
        if key in named or takes_kwargs:
            hook[key] = value
    # where pictures go: mmpretrain's `out_dir`, mmdet's `test_out_dir`, else (mmseg) the
    # visualizer's save_dir
    if show_dir:
        dir_keys = [k for k in ('out_dir', 'test_out_dir') if k in named]
        for key in dir_keys:
            hook[key] = show_dir
        if not dir_keys:
            if cfg.get('visualizer') is None:
                raise UserError(f'--show-dir: {args.config} has no visualizer to save with')
            cfg.visualizer['save_dir'] = show_dir


def add_dump_results(cfg, out: str, kind: str) -> None:
    """Append the metric that pickles every prediction to ``out`` to the test evaluator."""
    dump = dict(type='mmdet.DumpDetResults' if kind == 'detector' else 'mmengine.DumpResults',
                out_file_path=out)
    evaluator = cfg.test_evaluator
    if isinstance(evaluator, dict) and 'metrics' in evaluator:  # an Evaluator config
        metrics = evaluator.metrics
        evaluator.metrics = (list(metrics) if isinstance(metrics, (list, tuple))
                             else [metrics]) + [dump]
    else:
        cfg.test_evaluator = (list(evaluator) if isinstance(evaluator, (list, tuple))
                              else [evaluator]) + [dump]


def enable_tta(cfg, args) -> None:
    """Wrap the model in the config's ``tta_model`` and test with its ``tta_pipeline``."""
    missing = [k for k in ('tta_model', 'tta_pipeline') if cfg.get(k) is None]
    if missing:
        raise UserError(f'--tta: {args.config} has no {" / ".join(missing)}; add '
                        f"tta_model (e.g. dict(type='mmpretrain.AverageClsScoreTTA')) and "
                        f"tta_pipeline (ending in a TestTimeAug transform) to the config")
    cfg.model = dict(**cfg.tta_model, module=cfg.model)
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline


def merge_args(cfg, args):
    """Fold the command-line flags into the config, as mmpretrain's tools/test.py does."""
    set_work_dir(cfg, args.config, args.work_dir)
    cfg.load_from = check_checkpoint(args.checkpoint)
    if cfg.get('test_dataloader') is None or cfg.get('test_evaluator') is None:
        raise UserError(f'{args.config} has no test_dataloader / test_evaluator to test with')
    if args.amp:
        cfg.test_cfg = cfg.get('test_cfg') or {}
        cfg.test_cfg.fp16 = True
    if args.no_pin_memory:
        cfg.test_dataloader.pin_memory = False
    setup_scope(cfg)
    kind = config_model_kind(cfg)
    if args.show or args.show_dir:
        enable_visualization(cfg, args, kind)
    if args.out and (args.out_item or 'pred') == 'pred':
        add_dump_results(cfg, args.out, kind)
    if args.tta:
        enable_tta(cfg, args)
    return cfg


def main() -> int:
    args = parse_args()
    check_args(args)
    cfg = merge_args(load_config(args.config, args.cfg_options), args)
    runner = build_runner(cfg, args.launcher)
    metrics = runner.test()
    if args.out and args.out_item == 'metrics':
        from mmengine.dist import is_main_process
        from mmengine.fileio import dump
        if is_main_process():
            dump(metrics, args.out)
    return 0


if __name__ == '__main__':
    run_cli(main)
