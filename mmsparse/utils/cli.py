"""What every command line of mmsparse shares: config loading, model building and user errors.

A user error (a missing file, an unknown model type, a bad flag value, a bad config value:
:class:`~mmsparse.errors.ConfigError`) ends the command with one line ``error: ...`` that names
what is wrong and how to fix it, and exit status 2; anything else is a bug and keeps its traceback.
"""
import os
import sys
from typing import Callable, Optional, Sequence

from mmengine.config import Config, DictAction  # noqa: F401  (DictAction re-used by tools)

from mmsparse.datasets import DataNotFoundError
from mmsparse.datasets.data_root import ENV_VAR, HOW_TO_GET
from mmsparse.errors import CheckpointError, ConfigError, StackError

__all__ = ['UserError', 'run_cli', 'load_config', 'check_checkpoint', 'setup_scope', 'build_model']


# ``--launcher`` values, as MMEngine names them.
LAUNCHERS = ('none', 'pytorch', 'slurm', 'mpi')


class UserError(Exception):
    """An error in what the user asked for; reported as one line, without a traceback."""


# What a config may import that is not installed -> how to install it.
HOW_TO_INSTALL = {
    'mmdet': "pip install 'mmsparse[det]'", 'mmsegmentation': "pip install 'mmsparse[seg]'",
    'mmseg': "pip install 'mmsparse[seg]'", 'torchpack': "pip install 'mmsparse[mpi]'",
    'mpi4py': "pip install 'mmsparse[mpi]'",
    # mmengine's config loader imports pkg_resources, which setuptools 81 removed
    'pkg_resources': "pip install 'setuptools<81'",
}


def run_cli(main: Callable[[], Optional[int]]) -> None:
    """Run ``main`` and turn user errors into ``error: <message>`` and exit status 2.

    The entry point of every tool: it also drops the pinned stack's warnings that say nothing to
    a user (:func:`~mmsparse.compat.quiet_pinned_stack_warnings`; ``import mmsparse`` does not
    touch warning filters).
    """
    from mmsparse.compat import quiet_pinned_stack_warnings
    quiet_pinned_stack_warnings()
    try:
        code = main()
    except (UserError, DataNotFoundError, ConfigError, CheckpointError, StackError) as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)


def add_config_args(parser, launcher: bool = False) -> None:
    """The flags every tool shares: ``--cfg-options`` (and the launcher flags of train/test)."""
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value pairs')
    if launcher:
        parser.add_argument('--launcher', choices=LAUNCHERS, default='none',
                            help='job launcher: none (one process), pytorch (torchrun, '
                                 'tools/dist_train.sh), slurm (srun, tools/slurm_train.sh), '
                                 'mpi (mpirun, torchpack dist-run)')
        parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def parse_tool_args(parser, argv=None):
    """Parse; a torchrun launch passes ``--local-rank``, which MMEngine reads as LOCAL_RANK."""
    args = parser.parse_args(argv)
    if getattr(args, 'local_rank', None) is not None:
        os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def load_config(path: str, cfg_options: Optional[dict] = None) -> Config:
    """Load a config file, with ``--cfg-options`` merged in."""
    if not os.path.isfile(path):
        raise UserError(f'config file not found: {path} (give the path of a .py config, e.g. '
                        f'configs/vit/vit-tiny-p4_fashion-mnist.py)')
    try:
        cfg = Config.fromfile(path)
    except ModuleNotFoundError as e:  # `_base_ = 'mmdet::...'` without mmdet, a custom import
        package = getattr(e, 'name', None) or str(e).split()[0]
        how = HOW_TO_INSTALL.get(package, f'install {package}')
        raise UserError(f'{path} needs {package}, which is not installed ({e}); {how}') from None
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def check_checkpoint(path: Optional[str]) -> Optional[str]:
    """Check that a checkpoint given on the command line exists (URLs are left to mmengine)."""
    if path and '://' not in path and not os.path.isfile(path):
        raise UserError(f'checkpoint not found: {path} (give a .pth file written by '
                        f'tools/train.py, e.g. work_dirs/<config>/epoch_1.pth)')
    return path


def setup_scope(cfg: Config) -> None:
    """Import ``custom_imports``, register mmsparse's checkpoint loaders and enter the config's
    ``default_scope`` (default ``mmsparse``); every tool builds its model or Runner after it."""
    from mmengine.registry import init_default_scope
    from mmengine.utils import import_modules_from_strings

    if cfg.get('custom_imports'):
        import_modules_from_strings(**cfg['custom_imports'])
    import mmsparse  # registers mmsparse's modules
    # explicit (idempotent): the tools must not depend on who imported mmsparse first
    mmsparse.register_checkpoint_loaders()
    init_default_scope(cfg.get('default_scope', 'mmsparse'))


def registered_class(registry, obj_cfg: dict) -> Optional[type]:
    """The class a config dict (``type``, optional ``_scope_``) names in ``registry``, looked up
    in its scope (else the current default scope, as the Runner builds it); None if unknown.
    Call after :func:`setup_scope` (see :func:`mmsparse.utils.config.config_class`)."""
    from .config import config_class
    return config_class(obj_cfg, registry)


def config_model_kind(cfg: Config) -> str:
    """What ``cfg.model`` is, without building it: 'classifier' (mmpretrain), 'detector'
    (mmdet), 'segmentor' (mmseg) or 'other'. Call after :func:`setup_scope`."""
    from mmengine.registry import MODELS

    from mmsparse.analysis import model_kind

    cls = registered_class(MODELS, cfg.model)
    return model_kind(cls) if cls is not None else 'other'


def _check_model_types(model_cfg: dict, key: str = 'model') -> None:
    from mmengine.registry import MODELS, DefaultScope

    scope = model_cfg.get('_scope_') or DefaultScope.get_current_instance().scope_name
    with DefaultScope.overwrite_default_scope(scope):  # sub-modules build in this scope
        type_ = model_cfg.get('type')
        if isinstance(type_, str) and registered_class(MODELS, model_cfg) is None:
            raise UserError(f"{key}.type: '{type_}' is not a registered model in scope "
                            f"'{scope}'. Check the spelling, prefix it with its library "
                            f"('mmpretrain.', 'mmdet.', 'mmseg.', 'mmsparse.') or add that "
                            f"library to custom_imports")
        for sub in ('backbone', 'neck', 'head', 'decode_head'):
            if isinstance(model_cfg.get(sub), dict):
                _check_model_types(model_cfg[sub], f'{key}.{sub}')


def build_model(cfg: Config, checkpoint: Optional[str] = None, device: str = 'cpu'):
    """Build ``cfg.model`` (checked: an unknown type is a :class:`UserError`) and load weights."""
    from mmengine.registry import MODELS
    from mmengine.runner import load_checkpoint

    setup_scope(cfg)
    if 'model' not in cfg:
        raise UserError('the config has no `model` key')
    _check_model_types(cfg.model)
    model = MODELS.build(cfg.model)
    if checkpoint:
        check_checkpoint(checkpoint)
        load_checkpoint(model, checkpoint, map_location='cpu')
    return model.to(device).eval()


def positive_ints(values: Sequence[int], flag: str) -> list:
    """Check a list flag of sizes (e.g. ``--batch-sizes``): each value must be >= 1."""
    bad = [v for v in values if v < 1]
    if bad:
        raise UserError(f'{flag} must be positive integers, got {bad[0]} (e.g. {flag} 1 32)')
    return list(values)


def set_work_dir(cfg: Config, config_path: str, work_dir: Optional[str]) -> None:
    """``--work-dir``, else the config's, else ``./work_dirs/<config name>`` (OpenMMLab's rule)."""
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = os.path.join('./work_dirs',
                                    os.path.splitext(os.path.basename(config_path))[0])


AMP_WRAPPER_TYPES = ('OptimWrapper', 'AmpOptimWrapper', 'mmengine.OptimWrapper',
                     'mmengine.AmpOptimWrapper')


def enable_amp(cfg: Config) -> None:
    """``--amp`` of tools/train.py: train with MMEngine's ``AmpOptimWrapper`` (autocast, dynamic
    loss scaling), as mmpretrain's tools/train.py does.

    An optimizer-wrapper constructor that builds several wrappers (an ``OptimWrapperDict``)
    names, in its ``AMP_WRAPPERS`` attribute, the wrappers whose loss is scaled; only those
    become ``AmpOptimWrapper`` (UVC: ``weights``; its other wrappers step gradients that the
    primal-dual step computes in float32).

    Raises:
        UserError: without a GPU (MMEngine's ``AmpOptimWrapper`` needs CUDA, NPU, MLU or MUSA),
            or for a wrapper type other than ``OptimWrapper``.
    """
    from mmengine.device import (is_cuda_available, is_mlu_available, is_musa_available,
                                 is_npu_available)
    from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS

    if not (is_cuda_available() or is_npu_available() or is_mlu_available()
            or is_musa_available()):
        raise UserError("--amp needs a GPU: MMEngine's AmpOptimWrapper trains on CUDA, NPU, "
                        'MLU or MUSA devices, and none is available here (train without --amp)')
    optim_wrapper = cfg.get('optim_wrapper')
    if not optim_wrapper:
        raise UserError('--amp: the config has no optim_wrapper')
    setup_scope(cfg)  # the constructor is looked up in the config's scope
    targets = {'optim_wrapper': optim_wrapper}
    if 'constructor' in optim_wrapper:
        ctor = registered_class(OPTIM_WRAPPER_CONSTRUCTORS,
                                dict(type=optim_wrapper['constructor'],
                                     _scope_=optim_wrapper.get('_scope_')))
        keys = getattr(ctor, 'AMP_WRAPPERS', None)
        if keys is not None:
            targets = {f'optim_wrapper.{k}': optim_wrapper[k] for k in keys
                       if optim_wrapper.get(k) is not None}
    for key, wrapper in targets.items():
        type_ = wrapper.get('type', 'OptimWrapper')
        if type_ not in AMP_WRAPPER_TYPES:
            raise UserError(f"--amp: {key}.type is '{type_}'; --amp turns an OptimWrapper into "
                            f"an AmpOptimWrapper (for another wrapper, set its amp settings in "
                            f'the config)')
        wrapper['type'] = 'AmpOptimWrapper'
        wrapper.setdefault('loss_scale', 'dynamic')


def _config_logged_last_runner():
    from mmengine.runner import Runner

    class ConfigLoggedLastRunner(Runner):
        """MMEngine's Runner, except that the environment and the config (hundreds of lines)
        are logged once the model, optimizer and hooks are built, so that a bad config value
        ends in its one error line rather than below a config dump."""

        def _log_env(self, env_cfg: dict) -> None:
            self._deferred_env_cfg = env_cfg

        def log_start(self) -> None:
            Runner._log_env(self, self._deferred_env_cfg)

    return ConfigLoggedLastRunner


def build_runner(cfg: Config, launcher: str):
    """Enter the config's scope, start distributed (CPU or GPU) and build its Runner."""
    from mmengine.registry import RUNNERS

    from mmsparse.compat import LaunchError, ddp_wrapper_cfg, init_distributed

    if launcher not in LAUNCHERS:
        raise UserError(f'--launcher {launcher}: choose one of {", ".join(LAUNCHERS)}')
    cfg.launcher = launcher
    check_data_roots(cfg)
    setup_scope(cfg)
    if cfg.get('model_wrapper_cfg'):
        # the Runner looks the wrapper up in MMEngine's root registry, which ignores the default
        # scope: an unprefixed mmsparse wrapper (a config written for older mmsparse) gets it
        from mmengine.registry import MODEL_WRAPPERS

        from mmsparse.registry import scoped_type
        wrapper = cfg.model_wrapper_cfg
        wrapper['type'] = scoped_type(MODEL_WRAPPERS, wrapper.get('type',
                                                                  'MMDistributedDataParallel'))
    if launcher != 'none':
        try:
            init_distributed(launcher,
                             cfg.get('env_cfg', {}).get('dist_cfg', {}).get('backend'))
        except LaunchError as e:
            raise UserError(str(e)) from None
        from .launch import stop_with_launcher
        # a rank whose mpirun / torchrun / srun is gone would run on, writing the work dir
        stop_with_launcher(what=f'rank {os.environ.get("RANK", "?")}')
        ddp_wrapper_cfg(cfg)
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    runner = _config_logged_last_runner().from_cfg(cfg)
    runner.log_start()
    return runner


def input_size(cfg: Config, size: Optional[Sequence[int]], flag: str) -> tuple:
    """(H, W) from a ``H [W]`` flag, else the backbone's ``img_size``, else 224."""
    if size:
        if len(size) > 2:
            raise UserError(f'{flag} takes H or H W, got {list(size)}')
        positive_ints(size, flag)
        return (size[0], size[-1])
    size = cfg.model.get('backbone', {}).get('img_size', 224)
    return (size, size) if isinstance(size, int) else tuple(size)


def check_data_roots(cfg: Config) -> None:
    """Each dataloader's ``dataset.data_root`` must exist (else: where to get the data)."""
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        dataset = (cfg.get(key) or {}).get('dataset') or {}
        root = dataset.get('data_root')
        if root and not os.path.isdir(root):
            raise DataNotFoundError(f'{key}.dataset.data_root: {root} does not exist '
                                    f'({ENV_VAR}={os.environ.get(ENV_VAR, "unset")}). '
                                    f'{HOW_TO_GET}')
