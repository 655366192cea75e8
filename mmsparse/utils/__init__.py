from .cli import UserError, build_model, check_checkpoint, load_config, run_cli, setup_scope

__all__ = ['UserError', 'build_model', 'check_checkpoint', 'load_config', 'run_cli', 'setup_scope']
