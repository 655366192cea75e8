"""Composition: a token-pruning model on top of a compact (structurally pruned) model.

A compact checkpoint (``tools/compact.py --method uvc|svite``, or UVC's ``UVCCompactHook``)
carries ``meta['compact_structure']`` (:func:`~mmsparse.models.layers.compact_vit.
compact_structure`): how large every layer is. A classifier that takes a ``compact_checkpoint``
(``DynamicViTClassifier``) builds its backbone with that structure, so its layers have the
compact weights' shapes, then starts from those weights (:func:`load_compact_weights`, in
``init_weights``): only the token-pruning modules (the predictors) start fresh.

Everything is checked when the model is built, each error naming the config key: a file without
a structure, a structure of another width than the config's ``arch``, a config that sets a layer
size the checkpoint also sets, and weights whose shapes differ from the built model's.
"""
import copy
from typing import Dict, Sequence, Tuple

from torch import Tensor, nn

from mmsparse.errors import CheckpointError, ConfigError
from .layers.compact_vit import STRUCTURE_KEYS

__all__ = ['read_checkpoint_weights', 'read_compact_checkpoint', 'structured_backbone_cfg', 'check_compact_weights',
           'load_compact_weights']


def read_checkpoint_weights(path: str, key: str) -> Tuple[dict, Dict[str, Tensor]]:
    """A checkpoint (weights-only load) and its model weights: ``module.`` prefixes removed,
    ``teacher.*`` left out (a model starting from them distils from its own teacher).

    Raises:
        ConfigError: naming ``key``: a missing or unreadable file, or no state_dict.
    """
    from mmsparse.checkpoint import load_checkpoint_file
    try:
        ckpt = load_checkpoint_file(path, map_location='cpu')
    except CheckpointError as e:
        raise ConfigError(f'{key}: {e}') from None
    sd = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict):
        raise ConfigError(f'{key}: {path} holds no state_dict')
    sd = {(k[7:] if k.startswith('module.') else k): v for k, v in sd.items()
          if not k.startswith('teacher.')}
    return ckpt, sd


def read_compact_checkpoint(path: str, key: str) -> Tuple[dict, Dict[str, Tensor]]:
    """The structure and the weights of a compact checkpoint.

    Args:
        path: the ``.pth`` a compaction wrote, or a checkpoint of a composed model (its
            ``meta['compact_structure']`` is saved by ``DynamicViTOptimHook``), so that a composed
            model is tested, measured or exported from its own checkpoint.
        key: the config key that names it (for the error messages).

    Returns:
        ``(meta['compact_structure'], state_dict)`` (:func:`read_checkpoint_weights`).
    """
    ckpt, sd = read_checkpoint_weights(path, key)
    structure = (ckpt.get('meta') or {}).get('compact_structure')
    if not isinstance(structure, dict) or 'arch' not in structure:
        raise ConfigError(f'{key}={path!r} is not a compact checkpoint: it has no '
                          f"meta['compact_structure'] (write one with tools/compact.py "
                          f'--method uvc|svite, or UVCCompactHook)')
    return structure, sd


def structured_backbone_cfg(backbone: dict, structure: dict, key: str) -> dict:
    """``backbone`` (a config dict) with the compact ``structure``'s arch and layer sizes.

    The config's own ``arch`` must have the structure's width (``embed_dims``); its depth, heads
    and MLP widths are the structure's. A layer size the config sets itself must equal the
    structure's (one truth: the checkpoint's).
    """
    cfg = copy.deepcopy(dict(backbone))
    arch = structure['arch']
    own = cfg.get('arch', 'deit-small')
    if isinstance(own, dict):
        own_dims = own.get('embed_dims')
    else:
        from mmpretrain.models.backbones.vision_transformer import VisionTransformer
        own_dims = VisionTransformer.arch_zoo.get(str(own).lower(), {}).get('embed_dims')
    if own_dims is not None and own_dims != arch['embed_dims']:
        raise ConfigError(f'{key}: the compact model has embed_dims={arch["embed_dims"]}, but '
                          f'model.backbone.arch={own!r} has embed_dims={own_dims}: the checkpoint '
                          f'is not a compaction of this config\'s model')
    for k in STRUCTURE_KEYS:
        if k in cfg and cfg[k] != structure[k]:
            raise ConfigError(f'model.backbone.{k}={cfg[k]!r} differs from the compact model\'s '
                              f'{structure[k]!r} ({key}): leave it out, the checkpoint sets it')
    cfg['arch'] = dict(arch)
    cfg.update({k: copy.deepcopy(structure[k]) for k in STRUCTURE_KEYS})
    return cfg


def check_compact_weights(model: nn.Module, state_dict: Dict[str, Tensor],
                          fresh: Sequence[str], key: str) -> Dict[str, Tensor]:
    """The weights of ``state_dict`` that ``model`` takes; raises unless they fit exactly.

    Every backbone / head weight of the checkpoint must be a weight of ``model`` with the same
    shape, and every weight of ``model`` but those under the ``fresh`` prefixes (the new
    token-pruning modules) must be in the checkpoint. ``data_preprocessor.*`` is not compared.
    """
    own = model.state_dict()
    sd = {k: v for k, v in state_dict.items() if not k.startswith('data_preprocessor.')}
    unexpected = sorted(k for k in sd if k not in own)
    wrong = [(k, tuple(sd[k].shape), tuple(own[k].shape)) for k in sd
             if k in own and tuple(sd[k].shape) != tuple(own[k].shape)]
    missing = sorted(k for k in own if k not in sd and not k.startswith(tuple(fresh))
                     and not k.startswith(('data_preprocessor.', 'teacher.')))
    if wrong:
        k, got, want = wrong[0]
        raise ConfigError(f'{key}: {len(wrong)} weights do not fit the model built from its '
                          f'structure, e.g. {k} has shape {got} in the checkpoint, {want} in the '
                          f'model (img_size / patch_size / in_channels or the head differ from '
                          f'the compacted model\'s)')
    if unexpected or missing:
        raise ConfigError(f'{key}: the checkpoint does not fit the model: '
                          f'{len(unexpected)} unexpected weights {unexpected[:3]}, '
                          f'{len(missing)} missing {missing[:3]}')
    return sd


def load_compact_weights(model: nn.Module, path: str, fresh: Sequence[str], key: str) -> None:
    """Load the compact checkpoint's weights into ``model`` (checked as
    :func:`check_compact_weights`); the ``fresh`` modules keep their initialisation."""
    from mmengine.logging import print_log
    _, sd = read_compact_checkpoint(path, key)
    sd = check_compact_weights(model, sd, fresh, key)
    model.load_state_dict(sd, strict=False)
    print_log(f'{key}: {len(sd)} weights loaded from {path} (new: {", ".join(fresh)})',
              logger='current')
