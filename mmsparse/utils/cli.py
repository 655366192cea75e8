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
from mmsparse.errors import ConfigError

__all__ = ['UserError', 'run_cli', 'load_config', 'check_checkpoint', 'setup_scope', 'build_model']


class UserError(Exception):
    """An error in what the user asked for; reported as one line, without a traceback."""


def run_cli(main: Callable[[], Optional[int]]) -> None:
    """Run ``main`` and turn user errors into ``error: <message>`` and exit status 2."""
    try:
        code = main()
    except (UserError, DataNotFoundError, ConfigError) as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)


def add_config_args(parser, launcher: bool = False) -> None:
    """The flags every tool shares: ``--cfg-options`` (and the launcher flags of train/test)."""
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value pairs')
    if launcher:
        parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                            default='none', help='job launcher')
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
    cfg = Config.fromfile(path)
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
    """Import ``custom_imports`` and enter the config's ``default_scope`` (default ``mmsparse``)."""
    from mmengine.registry import init_default_scope
    from mmengine.utils import import_modules_from_strings

    if cfg.get('custom_imports'):
        import_modules_from_strings(**cfg['custom_imports'])
    import mmsparse  # noqa: F401  registers mmsparse's modules
    init_default_scope(cfg.get('default_scope', 'mmsparse'))


def _check_model_types(model_cfg: dict, key: str = 'model') -> None:
    from mmengine.registry import MODELS, DefaultScope

    scope = model_cfg.get('_scope_') or DefaultScope.get_current_instance().scope_name
    with MODELS.switch_scope_and_registry(scope) as registry:
        type_ = model_cfg.get('type')
        if isinstance(type_, str) and registry.get(type_) is None:
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


def build_runner(cfg: Config, launcher: str):
    """Enter the config's scope, start distributed (CPU or GPU) and build its Runner."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    from mmsparse.compat import ddp_wrapper_cfg, init_distributed

    cfg.launcher = launcher
    check_data_roots(cfg)
    setup_scope(cfg)
    if launcher in ('pytorch', 'mpi'):
        init_distributed(launcher, cfg.get('env_cfg', {}).get('dist_cfg', {}).get('backend'))
        ddp_wrapper_cfg(cfg)
    elif launcher != 'none':
        raise UserError(f"--launcher {launcher}: mmsparse's tools support none, pytorch "
                        f"(torchrun, tools/dist_train.sh) and mpi (mpirun, torchpack dist-run)")
    return Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)


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
