"""What models, hooks, compaction and the search share about wrapped models."""
from mmengine.model import is_model_wrapper
from torch import nn

__all__ = ['unwrap_model']


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside a DDP-like wrapper (``MMDistributedDataParallel``, mmsparse's
    ``UVCDistributedDataParallel``: any registered model wrapper), else ``model``."""
    return model.module if is_model_wrapper(model) else model
