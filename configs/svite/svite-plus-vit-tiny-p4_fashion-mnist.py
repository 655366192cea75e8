# SViTE+ on real Fashion-MNIST, from scratch, 1 epoch: unstructured density 0.5 (as
# svite-vit-tiny-p4_density0.5_fashion-mnist.py) plus a learnable token selector keeping 70 % of
# the 49 patch tokens (34 + the class token). Training: Gumbel top-k with straight-through
# gradients, temperature 10 -> 0.1, Gumbel noise 1 -> 0 over the first half of training (so that
# the second half trains with the selection inference uses); inference: the 34 best-scored
# tokens are gathered and the others removed (fewer FLOPs, lower latency).
_base_ = ['./svite-vit-tiny-p4_density0.5_fashion-mnist.py']

model = dict(backbone=dict(type='mmsparse.SViTEVisionTransformer', token_keep=0.7))
custom_hooks = [
    dict(type='SparseTrainingHook', density=0.5, sparse_init='fixed_ERK', growth='gradient',
         update_interval=100, stop_ratio=0.8, death_rate=0.5, death_rate_min=0.005),
    dict(type='TokenSelectorTemperatureHook', start=10.0, end=0.1, noise_until=0.5),
]
