"""mmsparse: sparse, measurably faster vision transformers as an OpenMMLab 2.x plugin."""
from setuptools import find_packages, setup


def read_requirements(path: str) -> list:
    with open(path) as f:
        return [line.split('#')[0].strip() for line in f
                if line.split('#')[0].strip() and not line.startswith('-')]


setup(
    name='mmsparse',
    version='0.1.0',
    description='Sparse vision transformers (SViTE, DynamicViT, UVC, SparseViT) for OpenMMLab 2.x',
    long_description=open('README.md').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['mmsparse', 'mmsparse.*']),
    python_requires='>=3.9',
    # mmcv (with compiled ops) is built by `make install`; see README "Pins".
    install_requires=read_requirements('requirements/runtime.txt'),
    extras_require={'tests': read_requirements('requirements/tests.txt')},
    license='Apache License 2.0',
)
