"""The model index: model-index.yml, every configs/<method>/metafile.yml and README.md.

Fast (no model is built): every config under configs/ (but configs/_base_) is listed exactly
once, every path the index names exists, every metafile is imported, every method README has
the sections OpenMMLab READMEs have, with a BibTeX citation.

README paths follow OpenMMLab's convention (relative to the repository root, e.g.
``configs/uvc/README.md``), as ``mim`` reads them; the ``model-index`` package itself resolves
them relative to the metafile, so its check reports them and this test checks them instead.
"""
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / 'configs'
README_SECTIONS = ('Abstract', 'How to apply it to your own config', 'Results and models',
                   'Differences from the original code', 'Usage', 'Citation')
TASKS = {'Image Classification', 'Object Detection', 'Instance Segmentation',
         'Semantic Segmentation'}


def _method_dirs():
    return sorted(d for d in CONFIGS.iterdir() if d.is_dir() and d.name != '_base_')


def _config_files():
    return sorted(p.relative_to(REPO).as_posix() for p in CONFIGS.rglob('*.py')
                  if '_base_' not in p.relative_to(CONFIGS).parts)


def _read_yaml(path: Path):
    with open(path) as f:
        return yaml.safe_load(f)


def load_index():
    """(imports, collections, models) of model-index.yml.

    Read with the ``model-index`` package (what ``mim search`` uses) when it is installed, else
    with PyYAML. ``collections`` / ``models`` are dicts of the metafile fields plus
    ``_metafile`` (the metafile's path relative to the repository root).
    """
    imports = _read_yaml(REPO / 'model-index.yml')['Import']
    try:
        from modelindex.load_model_index import load
    except ImportError:
        load = None
    collections, models = [], []
    if load is not None:
        index = load(str(REPO / 'model-index.yml'))
        for kind, items in (('collection', index.collections), ('model', index.models)):
            for item in items:
                d = dict(item.data)
                for key in ('Metadata', 'Results'):
                    value = d.get(key)
                    if value is not None and not isinstance(value, (dict, list)):
                        d[key] = value.data  # Metadata / ResultList objects
                if d.get('Results') is not None:
                    d['Results'] = [r.data if hasattr(r, 'data') else r for r in d['Results']]
                d['_metafile'] = Path(item.filepath).resolve().relative_to(REPO).as_posix()
                (collections if kind == 'collection' else models).append(d)
    else:
        for rel in imports:
            meta = _read_yaml(REPO / rel)
            for d in meta.get('Collections') or []:
                collections.append(dict(d, _metafile=rel))
            for d in meta.get('Models') or []:
                models.append(dict(d, _metafile=rel))
    return imports, collections, models


@pytest.fixture(scope='module')
def index():
    return load_index()


def test_every_metafile_is_imported(index):
    imports, _, _ = index
    assert len(imports) == len(set(imports)), f'imported twice: {imports}'
    for rel in imports:
        assert (REPO / rel).is_file(), f'model-index.yml imports {rel}, which does not exist'
    metafiles = sorted(p.relative_to(REPO).as_posix() for p in CONFIGS.rglob('metafile.yml'))
    assert sorted(imports) == metafiles


def test_every_method_folder_has_readme_and_metafile():
    for d in _method_dirs():
        assert (d / 'README.md').is_file(), f'{d.relative_to(REPO)} has no README.md'
        assert (d / 'metafile.yml').is_file(), f'{d.relative_to(REPO)} has no metafile.yml'


def test_every_config_is_listed_exactly_once(index):
    _, _, models = index
    listed = [m['Config'] for m in models]
    twice = sorted({c for c in listed if listed.count(c) > 1})
    assert not twice, f'listed more than once: {twice}'
    missing = sorted(set(_config_files()) - set(listed))
    assert not missing, f'configs not in any metafile: {missing}'
    unknown = sorted(set(listed) - set(_config_files()))
    assert not unknown, f'metafiles list configs that do not exist: {unknown}'


def test_models_name_their_config_collection_and_results(index):
    _, collections, models = index
    names = [m['Name'] for m in models]
    assert len(names) == len(set(names))
    by_file = {}
    for c in collections:
        by_file.setdefault(c['_metafile'], set()).add(c['Name'])
    for m in models:
        config = REPO / m['Config']
        assert config.is_file(), m['Config']
        assert m['Name'] == config.stem, f"{m['Name']}: the name must be the config's stem"
        assert Path(m['Config']).parent == Path(m['_metafile']).parent, m['Config']
        assert m['In Collection'] in by_file[m['_metafile']], m['Name']
        assert m.get('Weights') is None, f"{m['Name']}: no weights are hosted"
        for result in m.get('Results') or []:
            assert result['Task'] in TASKS, (m['Name'], result['Task'])
            assert isinstance(result['Dataset'], str) and result['Dataset'], m['Name']
            assert result['Metrics'] and all(isinstance(v, (int, float))
                                             for v in result['Metrics'].values()), m['Name']
        if m.get('Results'):
            assert m.get('Results Source'), f"{m['Name']}: say where the results come from"
        meta = m.get('Metadata') or {}
        for key in ('FLOPs', 'Parameters'):
            if key in meta:
                assert isinstance(meta[key], int) and meta[key] > 0, (m['Name'], key)


def test_every_readme_referenced_exists(index):
    _, collections, models = index
    for item in collections + models:
        readme = item.get('README')
        if readme is None:
            continue
        assert (REPO / readme).is_file(), f"{item['_metafile']}: README {readme} does not exist"
    for c in collections:
        assert c['README'] == Path(c['_metafile']).with_name('README.md').as_posix()


def test_model_index_package_finds_no_other_error():
    pytest.importorskip('modelindex')
    from modelindex.load_model_index import load
    index = load(str(REPO / 'model-index.yml'))
    # README paths are relative to the repository root (checked above); the package would
    # resolve them relative to the metafile
    errors = [e for e in index.check(silent=True) or [] if 'Path to README file' not in e]
    assert not errors, errors


@pytest.mark.parametrize('method', [d.name for d in _method_dirs()])
def test_method_readme_sections_and_citation(method):
    text = (CONFIGS / method / 'README.md').read_text()
    assert text.startswith('# '), 'a README starts with its title'
    headings = re.findall(r'^## (.+?)\s*$', text, flags=re.M)
    for section in README_SECTIONS:
        assert section in headings, f'configs/{method}/README.md has no "## {section}"'
    citation = text.split('\n## Citation', 1)[1].split('\n## ', 1)[0]
    blocks = re.findall(r'```bibtex\n(.*?)\n```', citation, flags=re.S)
    assert blocks, f'configs/{method}/README.md: no ```bibtex block under "## Citation"'
    for block in blocks:
        entries = re.findall(r'@\w+\{[^,\s]+,', block)
        assert entries, block[:200]
        assert block.count('{') == block.count('}'), 'unbalanced braces in the BibTeX'
        assert all(f in block for f in ('title', 'author', 'year')), block[:200]
    # every config of the folder is named in its README
    for config in sorted((CONFIGS / method).glob('*.py')):
        assert config.name in text, f'configs/{method}/README.md does not name {config.name}'
