"""mmsparse: sparse, measurably faster vision transformers as an OpenMMLab 2.x plugin.

As mmpretrain does for ``mim``: ``configs/``, ``tools/`` and ``model-index.yml`` are put inside the
package as ``mmsparse/.mim/`` (symlinks for an editable install, copies for a wheel or sdist), so
that ``mim train mmsparse CONFIG`` / ``mim test`` / ``mim run mmsparse search`` / ``mim search
mmsparse`` find them in an installed package.
"""
import os
import os.path as osp
import shutil
import sys

from setuptools import find_packages, setup

ROOT = osp.dirname(osp.abspath(__file__))
MIM_FILES = ('configs', 'tools', 'model-index.yml')


def read_version() -> str:
    scope: dict = {}
    with open(osp.join(ROOT, 'mmsparse', 'version.py')) as f:
        exec(compile(f.read(), 'mmsparse/version.py', 'exec'), scope)
    return scope['__version__']


def read_requirements(name: str) -> list:
    """The requirement lines of ``requirements/<name>.txt`` (comments and options dropped)."""
    with open(osp.join(ROOT, 'requirements', f'{name}.txt')) as f:
        lines = (line.split('#')[0].strip() for line in f)
        return [line for line in lines if line and not line.startswith('-')]


def add_mim_extension() -> None:
    """Make ``mmsparse/.mim/{configs,tools,model-index.yml}``: symlinks when building an
    editable install, copies when building a wheel or an sdist (nothing for other commands)."""
    if {'develop', 'editable_wheel'} & set(sys.argv):
        mode = 'symlink'
    elif {'sdist', 'bdist_wheel', 'build', 'build_py'} & set(sys.argv):
        mode = 'copy'
    else:
        return
    mim_path = osp.join(ROOT, 'mmsparse', '.mim')
    os.makedirs(mim_path, exist_ok=True)
    for name in MIM_FILES:
        src, dst = osp.join(ROOT, name), osp.join(mim_path, name)
        if not osp.exists(src):
            continue
        if osp.islink(dst) or osp.isfile(dst):
            os.remove(dst)
        elif osp.isdir(dst):
            shutil.rmtree(dst)
        if mode == 'symlink':
            os.symlink(osp.relpath(src, mim_path), dst)
        elif osp.isdir(src):
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
        else:
            shutil.copyfile(src, dst)


if __name__ == '__main__':
    add_mim_extension()
    det, seg, mpi, deploy = (read_requirements(n) for n in ('det', 'seg', 'mpi', 'deploy'))
    setup(
        name='mmsparse',
        version=read_version(),
        description='Sparse vision transformers (SViTE, DynamicViT, UVC, SparseViT) for '
                    'OpenMMLab 2.x',
        long_description=open(osp.join(ROOT, 'README.md')).read(),
        long_description_content_type='text/markdown',
        keywords='computer vision, vision transformer, sparsity, pruning, token pruning, '
                 'OpenMMLab',
        packages=find_packages(include=['mmsparse', 'mmsparse.*']),
        include_package_data=True,  # mmsparse/.mim (MANIFEST.in)
        python_requires='>=3.9',
        # mmcv is not listed (as in mmpretrain): any build of it works for classification; the
        # `mim` extra names it for `mim install mmsparse`. See README "Install".
        install_requires=read_requirements('runtime'),
        extras_require={
            'det': det, 'seg': seg, 'mpi': mpi, 'deploy': deploy,
            'mim': read_requirements('mminstall'),
            # tests.txt includes deploy.txt with `-r`, which read_requirements skips
            'tests': read_requirements('tests') + deploy,
            'all': det + seg + mpi + deploy,
        },
        license='Apache License 2.0',
        classifiers=[
            'Development Status :: 4 - Beta',
            'License :: OSI Approved :: Apache Software License',
            'Operating System :: OS Independent',
            'Programming Language :: Python :: 3',
            'Topic :: Scientific/Engineering :: Artificial Intelligence',
        ],
        zip_safe=False)
