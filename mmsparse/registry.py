"""Registries of mmsparse: children of MMEngine's roots with scope ``mmsparse``.

Configs reach them with ``default_scope='mmsparse'`` (or a ``mmsparse.`` prefix on a type) and
``custom_imports=dict(imports=['mmsparse'])``. Because they are children of the MMEngine roots, a
config under scope ``mmsparse`` still builds ``mmpretrain.``, ``mmdet.`` and ``mmseg.`` modules
through their scope prefixes, and parent lookups fall back to MMEngine's own modules.
"""
from mmengine.registry import DATA_SAMPLERS as MMENGINE_DATA_SAMPLERS
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import LOOPS as MMENGINE_LOOPS
from mmengine.registry import METRICS as MMENGINE_METRICS
from mmengine.registry import MODEL_WRAPPERS as MMENGINE_MODEL_WRAPPERS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import OPTIM_WRAPPERS as MMENGINE_OPTIM_WRAPPERS
from mmengine.registry import OPTIMIZERS as MMENGINE_OPTIMIZERS
from mmengine.registry import PARAM_SCHEDULERS as MMENGINE_PARAM_SCHEDULERS
from mmengine.registry import RUNNERS as MMENGINE_RUNNERS
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import VISBACKENDS as MMENGINE_VISBACKENDS
from mmengine.registry import VISUALIZERS as MMENGINE_VISUALIZERS
from mmengine.registry import WEIGHT_INITIALIZERS as MMENGINE_WEIGHT_INITIALIZERS
from mmengine.registry import Registry

__all__ = [
    'RUNNERS', 'LOOPS', 'HOOKS', 'DATASETS', 'DATA_SAMPLERS', 'TRANSFORMS', 'MODELS',
    'MODEL_WRAPPERS', 'WEIGHT_INITIALIZERS', 'OPTIMIZERS', 'OPTIM_WRAPPERS',
    'OPTIM_WRAPPER_CONSTRUCTORS', 'PARAM_SCHEDULERS', 'METRICS', 'VISUALIZERS', 'VISBACKENDS'
]


def scoped_type(registry: Registry, type_name: str) -> str:
    """``type_name`` with the ``mmsparse.`` prefix if only mmsparse's child of ``registry`` (a
    root) holds it, else unchanged.

    MMEngine's ``Runner.wrap_model`` looks ``model_wrapper_cfg.type`` up with
    ``MODEL_WRAPPERS.get`` on the root registry, which (unlike ``build``) ignores the default
    scope: an unprefixed mmsparse wrapper (``'UVCDistributedDataParallel'`` under
    ``default_scope='mmsparse'``) is only found with its scope written out.
    """
    if not isinstance(type_name, str) or '.' in type_name or registry.get(type_name) is not None:
        return type_name
    child = registry.children.get('mmsparse')
    return f'mmsparse.{type_name}' if child is not None and child.get(type_name) is not None \
        else type_name


def _child(name: str, parent: Registry) -> Registry:
    # Importing the package registers every mmsparse module (see mmsparse/__init__.py).
    return Registry(name, parent=parent, scope='mmsparse', locations=['mmsparse'])


RUNNERS = _child('runner', MMENGINE_RUNNERS)
LOOPS = _child('loop', MMENGINE_LOOPS)
HOOKS = _child('hook', MMENGINE_HOOKS)
DATASETS = _child('dataset', MMENGINE_DATASETS)
DATA_SAMPLERS = _child('data sampler', MMENGINE_DATA_SAMPLERS)
TRANSFORMS = _child('transform', MMENGINE_TRANSFORMS)
MODELS = _child('model', MMENGINE_MODELS)
MODEL_WRAPPERS = _child('model_wrapper', MMENGINE_MODEL_WRAPPERS)
WEIGHT_INITIALIZERS = _child('weight initializer', MMENGINE_WEIGHT_INITIALIZERS)
OPTIMIZERS = _child('optimizer', MMENGINE_OPTIMIZERS)
OPTIM_WRAPPERS = _child('optim wrapper', MMENGINE_OPTIM_WRAPPERS)
OPTIM_WRAPPER_CONSTRUCTORS = _child('optimizer wrapper constructor',
                                    MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS)
PARAM_SCHEDULERS = _child('parameter scheduler', MMENGINE_PARAM_SCHEDULERS)
METRICS = _child('metric', MMENGINE_METRICS)
VISUALIZERS = _child('visualizer', MMENGINE_VISUALIZERS)
VISBACKENDS = _child('vis_backend', MMENGINE_VISBACKENDS)
