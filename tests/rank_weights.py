"""A hook for the multi-node test: every rank saves its model's weights at the end of the run
(MMEngine's checkpoints are written by rank 0 only). Imported through ``custom_imports``."""
import os.path as osp

import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook

from mmsparse.models.utils import unwrap_model
from mmsparse.registry import HOOKS


@HOOKS.register_module()
class SaveRankWeightsHook(Hook):
    """Write ``<work_dir>/rank<R>.pth``: this rank's state_dict after training."""

    def after_run(self, runner) -> None:
        torch.save(unwrap_model(runner.model).state_dict(),
                   osp.join(runner.work_dir, f'rank{get_rank()}.pth'))
