"""A frozen dense teacher that rides along a classifier without being its submodule.

:class:`FrozenTeacherMixin` is shared by :class:`~mmsparse.models.DynamicViTClassifier` and
:class:`~mmsparse.models.UVCClassifier`: the teacher is out of ``parameters()`` (so out of the
optimizers and parameter counts) and out of ``train()``, but ``.to()`` / ``.cuda()`` move it, and
it travels in checkpoints as ``teacher.*`` (state_dict hooks). Its weights are
``teacher_checkpoint`` if given (loaded by ``init_weights``), else a copy of the student's dense
weights taken at the first teacher forward (i.e. after ``load_from`` / ``init_cfg``).
"""
import copy
from typing import Dict, Optional, Sequence, Union

from mmengine.logging import print_log
from torch import Tensor, nn

from mmsparse.errors import ConfigError
from mmsparse.registry import MODELS
from .layers.compact_vit import STRUCTURE_KEYS

__all__ = ['FrozenTeacherMixin']


def _save_teacher_hook(module: 'FrozenTeacherMixin', state_dict: dict, prefix: str,
                       local_metadata: dict) -> None:
    """state_dict post-hook: the teacher is saved as ``teacher.*`` (once it has weights; one
    from ``teacher_checkpoint`` only if ``_save_loaded_teacher``)."""
    teacher = module.teacher
    if teacher is None or not module._teacher_ready:
        return
    if module.teacher_checkpoint is not None and not module._save_loaded_teacher:
        return
    for k, v in teacher.state_dict().items():
        state_dict[f'{prefix}teacher.{k}'] = v.detach()


def _load_teacher_hook(module: 'FrozenTeacherMixin', state_dict: dict, prefix: str,
                       local_metadata: dict, strict: bool, missing_keys: list,
                       unexpected_keys: list, error_msgs: list) -> None:
    """load_state_dict pre-hook: ``teacher.*`` keys go to the teacher (or are dropped)."""
    head = f'{prefix}teacher.'
    keys = [k for k in state_dict if k.startswith(head)]
    if not keys:
        return
    sub = {k[len(head):]: state_dict.pop(k) for k in keys}
    if module.teacher is not None:
        module.teacher.load_state_dict(sub, strict=True)
        module._teacher_ready = True


class FrozenTeacherMixin:
    """The frozen dense teacher of a sparse-ViT ``ImageClassifier`` (put it first in the bases).

    The classifier calls :meth:`_init_teacher` at the end of its ``__init__`` and reads the
    teacher through :attr:`teacher` (after :meth:`_ensure_teacher`). What differs between
    methods is in the class attributes and :meth:`_adapt_teacher_cfg` / :meth:`_check_teacher`.

    Attributes:
        _teacher_name: the method's name in log lines ('DynamicViT' gives 'DynamicViT teacher').
        _student_only_keys: backbone config keys the dense ``VisionTransformer`` does not take
            (dropped when the teacher is built from the student's config).
        _save_loaded_teacher: also save a teacher loaded from ``teacher_checkpoint`` as
            ``teacher.*`` (else only a teacher copied from the student is saved).
    """
    _teacher_name: str = ''
    _student_only_keys: Sequence[str] = ()
    _save_loaded_teacher: bool = True

    def _init_teacher(self, teacher: Optional[Union[str, dict]],
                      teacher_checkpoint: Optional[str], backbone_cfg: Optional[dict],
                      head_cfg: Optional[dict], build: bool) -> None:
        """Build the teacher if ``build`` and register the checkpoint hooks."""
        self.teacher_checkpoint = teacher_checkpoint
        self._set_teacher(None)
        self._teacher_ready = False
        if build:
            self._set_teacher(self._build_teacher(teacher, backbone_cfg, head_cfg))
        self.register_state_dict_post_hook(_save_teacher_hook)
        self.register_load_state_dict_pre_hook(_load_teacher_hook)

    @property
    def teacher(self) -> Optional[nn.Module]:
        return self.__dict__['_teacher']

    def _set_teacher(self, teacher: Optional[nn.Module]) -> None:
        # not a submodule: out of parameters(), state_dict() (see the hooks) and train()
        object.__setattr__(self, '_teacher', teacher)

    def _build_teacher(self, teacher: Optional[Union[str, dict]], backbone_cfg: Optional[dict],
                       head_cfg: Optional[dict]) -> nn.Module:
        if teacher is None:
            if backbone_cfg is None or head_cfg is None:
                raise ConfigError('model.teacher: give a teacher config when backbone and head '
                                  'are modules rather than config dicts')
            bb = {k: v for k, v in backbone_cfg.items() if k not in self._student_only_keys}
            # a student with its own layer sizes (a compact model) has a compact teacher
            compact = any(k in bb for k in STRUCTURE_KEYS)
            bb.update(type='mmsparse.CompactVisionTransformer' if compact else
                      'mmpretrain.VisionTransformer', init_cfg=None)
            cfg = dict(type='mmpretrain.ImageClassifier', backbone=bb, head=head_cfg)
        elif isinstance(teacher, str):
            from mmengine.config import Config
            cfg = Config.fromfile(teacher).model.to_dict()
        elif isinstance(teacher, dict):
            cfg = copy.deepcopy(teacher)
            cfg = cfg.to_dict() if hasattr(cfg, 'to_dict') else cfg
        else:
            raise ConfigError(f'model.teacher must be None, a model config dict or a config file '
                              f'path, got {type(teacher).__name__}')
        cfg = self._adapt_teacher_cfg(cfg)
        cfg.setdefault('_scope_', 'mmpretrain')
        cfg['data_preprocessor'] = dict(type='mmpretrain.ClsDataPreprocessor')
        cfg.pop('train_cfg', None)
        model = MODELS.build(cfg)
        self._check_teacher(model)
        model.requires_grad_(False)
        model.eval()
        return model

    def _adapt_teacher_cfg(self, cfg: dict) -> dict:
        """The teacher's model config as the method needs it (default: unchanged)."""
        return cfg

    def _check_teacher(self, model: nn.Module) -> None:
        """Raise a ConfigError if the built teacher does not fit the student."""
        t_cls = getattr(getattr(model, 'head', None), 'num_classes', None)
        s_cls = getattr(self.head, 'num_classes', None)
        if t_cls != s_cls:
            raise ConfigError(f'model.teacher: head.num_classes {t_cls} does not match the '
                              f"student's {s_cls}")

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        if self.teacher is not None:
            self.teacher._apply(fn, recurse)
        return self

    def init_weights(self) -> None:
        super().init_weights()
        if self.teacher is not None and self.teacher_checkpoint:
            self.load_teacher(self.teacher_checkpoint)

    def load_teacher(self, filename: str) -> None:
        """Load the teacher's weights from a classifier checkpoint (all of its backbone and head
        weights must be there; other keys are ignored)."""
        from mmengine.runner.checkpoint import CheckpointLoader
        ckpt = CheckpointLoader.load_checkpoint(filename, map_location='cpu')
        sd = ckpt.get('state_dict', ckpt)
        sd = {(k[7:] if k.startswith('module.') else k): v for k, v in sd.items()}
        own = self.teacher.state_dict()
        sd = {k: v for k, v in sd.items() if k in own}
        wrong = [k for k, v in sd.items() if tuple(v.shape) != tuple(own[k].shape)]
        if wrong:
            k = wrong[0]
            raise ConfigError(f'model.teacher_checkpoint {filename}: {len(wrong)} weights do not '
                              f'fit the teacher ({type(self.teacher.backbone).__name__}), e.g. '
                              f'{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}: give '
                              f'model.teacher the config of the model it is a checkpoint of')
        missing = sorted(k for k in own if k.startswith(('backbone.', 'head.')) and k not in sd)
        if missing:
            raise ConfigError(f'model.teacher_checkpoint {filename}: missing {len(missing)} '
                              f'teacher weights, e.g. {missing[:3]} (expected a checkpoint of a '
                              f'classifier of the teacher\'s arch)')
        self.teacher.load_state_dict(sd, strict=False)
        self._teacher_ready = True
        print_log(f'{self._teacher_name} teacher loaded from {filename}', logger='current')

    def _student_dense_state(self) -> Dict[str, Tensor]:
        """The student's weights that make the teacher, with the teacher's keys: every student
        weight the teacher has (a DDP-wrapped part unwrapped)."""
        own = self.teacher.state_dict()
        sd = {k.replace('.module.', '.'): v for k, v in self.state_dict().items()}
        return {k: v for k, v in sd.items() if k in own}

    def _teacher_from_student(self) -> None:
        self.teacher.load_state_dict(self._student_dense_state(), strict=True)
        self._teacher_ready = True
        # a compact student (its own layer sizes) has a compact teacher, else a dense one
        kind = 'compact' if type(self.teacher.backbone).__name__ == 'CompactVisionTransformer' \
            else 'dense'
        print_log(f'{self._teacher_name} teacher: a frozen copy of the student\'s {kind} weights '
                  f'at the start of training', logger='current')

    def _ensure_teacher(self) -> nn.Module:
        """The teacher in eval mode, copied from the student first if it has no weights yet."""
        if not self._teacher_ready:
            self._teacher_from_student()
        self.teacher.eval()
        return self.teacher
