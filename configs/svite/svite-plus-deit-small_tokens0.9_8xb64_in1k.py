# SViTE+-Small: unstructured density 0.5 plus a learnable token selector keeping 90 % of the 196
# patch tokens (176 + the class token = the original's --token_number 177), trained from scratch
# with the SViTE-Small recipe. Training: Gumbel top-k with straight-through gradients,
# temperature 10 -> 0.1 and Gumbel noise 1 -> 0 over training (noise_end=1.0 keeps the
# original's constant noise); inference: the 176 best-scored tokens are gathered, the
# others removed (fewer FLOPs, lower latency).
_base_ = ['./svite-deit-small_density0.5_8xb64_in1k.py']

model = dict(backbone=dict(type='mmsparse.SViTEVisionTransformer', token_keep=0.9))
custom_hooks = [
    dict(type='SparseTrainingHook', density=0.5, sparse_init='fixed_ERK', growth='gradient',
         update_interval=15000, stop_ratio=0.8, death_rate=0.5, death_rate_min=0.005),
    dict(type='TokenSelectorTemperatureHook', start=10.0, end=0.1),
]
