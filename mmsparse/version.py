"""mmsparse's version, and the versions of the stack it runs on.

``setup.py`` reads ``__version__`` from this file; ``import mmsparse`` calls
:func:`check_stack`, which reads installed versions from package metadata (nothing is imported)
and names what to install when one is missing or outside its range.
"""
from importlib import metadata
from typing import Dict, List, Optional, Tuple

__version__ = '0.1.0'

# The ranges mmsparse is tested within (requirements/*.txt give the same ranges to pip).
# mmcv is not a pip requirement of mmsparse, as of mmpretrain: a classification user may have
# any build of it (with or without compiled ops, distribution 'mmcv' or 'mmcv-lite').
STACK: Dict[str, Tuple[str, Optional[str]]] = {
    'torch': ('2.0.0', None),
    'mmengine': ('0.10.0', '1.0.0'),
    'mmcv': ('2.0.0', '2.2.0'),
    'mmpretrain': ('1.2.0', '2.0.0'),
}
HOW_TO_INSTALL = {
    'torch': 'see https://pytorch.org/get-started/locally/',
    'mmcv': "`mim install 'mmcv>=2.0.0,<2.2.0'` (a prebuilt wheel for your torch / CUDA), or "
            "`make install` in mmsparse's source tree, which builds it",
}


def parse_version_info(version_str: str) -> tuple:
    """``'0.1.0'`` -> ``(0, 1, 0)``; ``'1.0.0rc1'`` -> ``(1, 0, 0, 'rc1')``."""
    info = []
    for part in version_str.split('.'):
        num = part[:len(part) - len(part.lstrip('0123456789'))]
        info += [int(num)] if num == part else [int(num), part[len(num):]] if num else [part]
    return tuple(info)


version_info = parse_version_info(__version__)


def _installed(name: str) -> Optional[str]:
    for dist in (name, 'mmcv-lite') if name == 'mmcv' else (name, ):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def stack_problems(stack: Optional[Dict[str, Tuple[str, Optional[str]]]] = None,
                   installed=_installed) -> List[str]:
    """One sentence per package of ``stack`` that is missing or outside its range."""
    from packaging.version import Version

    problems = []
    for name, (low, high) in (stack or STACK).items():
        spec = f'{name}>={low}' + (f',<{high}' if high else '')
        how = HOW_TO_INSTALL.get(name, f"pip install '{spec}'")
        found = installed(name)
        if found is None:
            problems.append(f'mmsparse {__version__} needs {spec}, which is not installed: {how}')
            continue
        release = Version(Version(found).base_version)  # 2.13.0+cu130 -> 2.13.0
        if release < Version(low) or (high and release >= Version(high)):
            problems.append(f'mmsparse {__version__} needs {spec}, found {name} {found}: {how}')
    return problems


def check_stack() -> None:
    """Raise :class:`~mmsparse.errors.StackError` naming every package out of range."""
    from .errors import StackError

    problems = stack_problems()
    if problems:
        raise StackError('; '.join(problems))
