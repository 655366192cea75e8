"""Checkpoint loading once mmsparse is imported: weights-only for local files and URLs (served
from 127.0.0.1 by the test), refused objects and unreadable files as one clear error, the
trusted-file opt-in, and registration that leaves other packages' loaders alone."""
import functools
import http.server
import socket
import threading
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner import CheckpointLoader
from mmengine.runner import checkpoint as mmengine_ckpt

import mmsparse  # noqa: F401  (registers the loaders)
from mmsparse.checkpoint import TRUST_ENV, load_checkpoint_file, register_checkpoint_loaders
from mmsparse.errors import CheckpointError


def runner_like_checkpoint() -> dict:
    """What a Runner checkpoint holds besides tensors: a message hub of HistoryBuffers, numpy
    arrays and scalars in meta."""
    buf = HistoryBuffer()
    buf.update(1.5)
    buf.update(np.float64(2.5))
    return {
        'meta': {'epoch': 1, 'seed': np.int64(3), 'hook_msgs': {'best': np.float32(0.5)}},
        'message_hub': {'log_scalars': {'train/loss': buf},
                        'runtime_info': {'arr': np.arange(4, dtype=np.int32)}},
        'state_dict': {'w': torch.ones(2)},
        'optimizer': {'state': {0: {'step': torch.tensor(3.)}}, 'param_groups': [{'lr': 0.1}]},
    }


def check_runner_like(loaded: dict) -> None:
    assert loaded['message_hub']['log_scalars']['train/loss'].mean() == pytest.approx(2.0)
    assert loaded['meta']['seed'] == 3
    np.testing.assert_array_equal(loaded['message_hub']['runtime_info']['arr'], np.arange(4))
    torch.testing.assert_close(loaded['state_dict']['w'], torch.ones(2))


class Evil:
    """Unpickling it would create the file ``marker`` (so a test sees whether code ran)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, 'w'))


@dataclass
class Custom:
    """A harmless object outside the allow-list (for the trusted-file opt-in)."""
    value: int


@pytest.fixture
def served(tmp_path, monkeypatch):
    """An HTTP server on 127.0.0.1 serving ``tmp_path/www`` (stopped after the test, and by a
    60 s timer whatever happens); downloads go to a fresh TORCH_HOME."""
    www = tmp_path / 'www'
    www.mkdir()
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    timer = threading.Timer(60, server.shutdown)
    timer.daemon = True
    timer.start()
    yield www, f'http://127.0.0.1:{server.server_address[1]}'
    timer.cancel()
    server.shutdown()
    server.server_close()


def test_runner_like_checkpoint_loads_through_mmengine(tmp_path):
    path = tmp_path / 'ckpt.pth'
    torch.save(runner_like_checkpoint(), path)
    check_runner_like(CheckpointLoader.load_checkpoint(str(path), map_location='cpu'))


def test_local_loads_stay_weights_only(tmp_path):
    marker = tmp_path / 'ran'
    torch.save({'x': Evil(marker)}, tmp_path / 'evil.pth')
    with pytest.raises(CheckpointError) as e:
        CheckpointLoader.load_checkpoint(str(tmp_path / 'evil.pth'), map_location='cpu')
    assert 'io.open' in str(e.value) and TRUST_ENV in str(e.value)
    assert len(str(e.value).splitlines()) == 1
    assert not marker.exists()
    # the allow-list is scoped to MMEngine's checkpoint loads, not global
    buf = HistoryBuffer()
    buf.update(1.0)
    torch.save({'hub': buf}, tmp_path / 'hub.pth')
    with pytest.raises(Exception, match='[Ww]eights only load failed'):
        torch.load(tmp_path / 'hub.pth', weights_only=True)


def test_trusted_files_load_with_full_pickle(tmp_path, monkeypatch):
    path = tmp_path / 'custom.pth'
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'extra': Custom(7)}, path)
    with pytest.raises(CheckpointError, match='Custom'):
        load_checkpoint_file(str(path))
    monkeypatch.setenv(TRUST_ENV, f'/nowhere,{tmp_path}')  # a prefix of the path
    assert load_checkpoint_file(str(path))['extra'] == Custom(7)


def test_missing_and_corrupt_files_are_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match='checkpoint not found'):
        CheckpointLoader.load_checkpoint(str(tmp_path / 'none.pth'))
    (tmp_path / 'corrupt.pth').write_bytes(b'no checkpoint here\n' * 10)
    with pytest.raises(CheckpointError, match='not a readable PyTorch checkpoint') as e:
        CheckpointLoader.load_checkpoint(str(tmp_path / 'corrupt.pth'))
    assert len(str(e.value).splitlines()) == 1


def test_urls_load_weights_only(served, tmp_path):
    www, url = served
    # a Runner checkpoint, by load_from-style loading
    torch.save(runner_like_checkpoint(), www / 'runner.pth')
    check_runner_like(CheckpointLoader.load_checkpoint(f'{url}/runner.pth', map_location='cpu'))
    assert (tmp_path / 'torch_home/hub/checkpoints/runner.pth').is_file()  # torch's hub cache

    # a model-zoo file {'state_dict', 'meta'} through init_cfg=dict(type='Pretrained')
    from mmengine.registry import MODELS, init_default_scope
    init_default_scope('mmpretrain')
    arch = dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64)
    source = MODELS.build(dict(type='VisionTransformer', arch=arch, img_size=32, patch_size=8))
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in source.state_dict().items()},
                'meta': {'mmpretrain_version': '1.2.0'}}, www / 'zoo.pth')
    target = MODELS.build(dict(
        type='VisionTransformer', arch=arch, img_size=32, patch_size=8,
        init_cfg=dict(type='Pretrained', checkpoint=f'{url}/zoo.pth', prefix='backbone.')))
    target.init_weights()
    for k, v in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[k], v, rtol=0, atol=0, msg=k)

    # a file that needs code to unpickle is refused, and its code never runs
    marker = tmp_path / 'ran'
    torch.save({'state_dict': {}, 'x': Evil(marker)}, www / 'evil.pth')
    with pytest.raises(CheckpointError, match='io.open'):
        CheckpointLoader.load_checkpoint(f'{url}/evil.pth')
    assert not marker.exists()


def test_unreachable_and_missing_urls_are_checkpoint_errors(served):
    _, url = served
    with pytest.raises(CheckpointError, match='cannot download checkpoint .*missing.pth'):
        CheckpointLoader.load_checkpoint(f'{url}/missing.pth')
    with socket.socket() as s:  # a port nobody listens on
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    with pytest.raises(CheckpointError, match='cannot download checkpoint') as e:
        CheckpointLoader.load_checkpoint(f'http://127.0.0.1:{port}/x.pth')
    assert len(str(e.value).splitlines()) == 1


def test_registration_leaves_other_loaders_alone(monkeypatch):
    schemes = dict(CheckpointLoader._schemes)
    monkeypatch.setattr(CheckpointLoader, '_schemes', schemes)

    def someone_elses(filename, map_location=None):
        return {'state_dict': {}}

    CheckpointLoader.register_scheme('https://', someone_elses, force=True)
    assert register_checkpoint_loaders()
    assert CheckpointLoader._schemes['https://'] is someone_elses
    assert CheckpointLoader._schemes['http://'].__module__ == 'mmsparse.checkpoint'
    for prefix in ('', 'torchvision://', 'open-mmlab://', 'mmcls://', 'sparse://'):
        assert CheckpointLoader._schemes[prefix].__module__ == 'mmsparse.checkpoint', prefix


def test_older_torch_keeps_mmengine_loaders(monkeypatch):
    schemes = {'': mmengine_ckpt.load_from_local, 'http://': mmengine_ckpt.load_from_http}
    monkeypatch.setattr(CheckpointLoader, '_schemes', dict(schemes))
    monkeypatch.delattr(torch.serialization, 'safe_globals')
    assert register_checkpoint_loaders() is False
    assert CheckpointLoader._schemes == schemes


def test_tools_report_bad_checkpoints_in_one_line(tmp_path, data_root):
    from tests.conftest import DEMO_CONFIG, one_error_line, run_tool
    corrupt = tmp_path / 'corrupt.pth'
    corrupt.write_bytes(b'not a checkpoint\n' * 8)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(('127.0.0.1', 0))
        url = f'http://127.0.0.1:{s.getsockname()[1]}/epoch_1.pth'
    svite = 'configs/svite/svite-vit-tiny-p4_density0.5_fashion-mnist.py'
    for args, needle in [
            (('tools/test.py', DEMO_CONFIG, corrupt, '--work-dir', tmp_path / 'w'),
             'is not a readable PyTorch checkpoint'),
            (('tools/compact.py', svite, corrupt, '--out', tmp_path / 'c', '--method', 'svite'),
             'is not a readable PyTorch checkpoint'),
            (('tools/test.py', DEMO_CONFIG, url, '--work-dir', tmp_path / 'w'),
             f'cannot download checkpoint {url}')]:
        one_error_line(run_tool(*args), needle)


def test_tools_register_the_loaders_explicitly_and_idempotently(monkeypatch):
    """setup_scope (every tool's path to a model or Runner) registers the loaders itself, and
    registering twice changes nothing."""
    from mmengine.config import Config

    from mmsparse.utils import setup_scope
    monkeypatch.setattr(CheckpointLoader, '_schemes', {'': mmengine_ckpt.load_from_local})
    setup_scope(Config(dict()))
    first = dict(CheckpointLoader._schemes)
    assert first[''].__module__ == 'mmsparse.checkpoint'
    assert first['sparse://'].__module__ == 'mmsparse.checkpoint'
    assert register_checkpoint_loaders()
    assert CheckpointLoader._schemes == first
