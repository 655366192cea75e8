from .cli import UserError, build_model, check_checkpoint, load_config, run_cli, setup_scope
from .config import config_class, derived_config_text, is_config_of, write_derived_config

__all__ = ['UserError', 'build_model', 'check_checkpoint', 'load_config', 'run_cli', 'setup_scope',
           'config_class', 'derived_config_text', 'is_config_of', 'write_derived_config']
