"""SViTE+'s Gumbel temperature schedule: :class:`TokenSelectorTemperatureHook`."""
from mmengine.hooks import Hook

from mmsparse.errors import ConfigError
from mmsparse.models.utils import unwrap_model
from mmsparse.registry import HOOKS
from mmsparse.validation import Keys

__all__ = ['TokenSelectorTemperatureHook']


@HOOKS.register_module()
class TokenSelectorTemperatureHook(Hook):
    """Anneal the Gumbel temperature (and noise) of SViTE+'s token selectors over training.

    Before every training iteration, with ``t = iter / max_iters``:
    ``tau = start + (end - start) * t`` (the original's ``get_tau`` after its "fix-tau" commit:
    10 -> 0.1) and ``noise_scale = noise_start + (noise_end - noise_start) * min(t / noise_until,
    1)``. The original keeps the noise at 1 (``noise_end=1.0`` reproduces it) and evaluates
    with noise; mmsparse infers with a deterministic top-k, so by default the noise fades to 0
    and the last training iterations select exactly as inference does. The position is the
    Runner's iteration, so a resumed run continues both schedules.

    Args:
        start: temperature at iteration 0 (> 0).
        end: temperature at the last iteration (> 0).
        noise_start: Gumbel noise scale at iteration 0 (>= 0).
        noise_end: Gumbel noise scale reached at ``noise_until`` (>= 0).
        noise_until: fraction of training (0, 1] after which the noise stays at ``noise_end``
            (e.g. 0.5: the second half trains with the selection inference uses).
    """

    priority = 'NORMAL'

    def __init__(self, start: float = 10.0, end: float = 0.1, noise_start: float = 1.0,
                 noise_end: float = 0.0, noise_until: float = 1.0) -> None:
        self.keys = keys = Keys('custom_hooks[TokenSelectorTemperatureHook]')
        self.start = float(keys.number('start', start, 0.0, low_open=True))
        self.end = float(keys.number('end', end, 0.0, low_open=True))
        self.noise_start = float(keys.number('noise_start', noise_start, 0.0))
        self.noise_end = float(keys.number('noise_end', noise_end, 0.0))
        self.noise_until = float(keys.number('noise_until', noise_until, 0.0, 1.0,
                                             low_open=True))
        self.selectors: list = []

    def before_run(self, runner) -> None:
        from mmsparse.models.svite import TokenSelector
        self.selectors = [m for m in unwrap_model(runner.model).modules()
                          if isinstance(m, TokenSelector)]
        if not self.selectors:
            raise ConfigError(f"{self.keys.prefix}: the model has no token selector; set "
                              f"model.backbone.type='mmsparse.SViTEVisionTransformer' and "
                              f"model.backbone.token_keep")

    def tau_at(self, it: int, max_iters: int) -> float:
        """The temperature before iteration ``it`` (0-based) of ``max_iters``."""
        return self.start + (self.end - self.start) * min(it, max_iters) / max(max_iters, 1)

    def noise_at(self, it: int, max_iters: int) -> float:
        """The Gumbel noise scale before iteration ``it`` (0-based) of ``max_iters``."""
        t = min(it / max(max_iters, 1) / self.noise_until, 1.0)
        return self.noise_start + (self.noise_end - self.noise_start) * t

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        tau = self.tau_at(runner.iter, runner.max_iters)
        noise = self.noise_at(runner.iter, runner.max_iters)
        for s in self.selectors:
            s.tau, s.noise_scale = tau, noise
        runner.message_hub.update_scalar('train/token_tau', tau)
        runner.message_hub.update_scalar('train/token_noise', noise)
