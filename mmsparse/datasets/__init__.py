from .data_root import DataNotFoundError, data_root, prepare_data, require_data

__all__ = ['DataNotFoundError', 'data_root', 'prepare_data', 'require_data']
