# SViTE+-Small: unstructured density 0.5 plus a learnable token selector keeping 90 % of the 196
# patch tokens (176 + the class token = the original's --token_number 177), trained from scratch
# with the SViTE-Small recipe. Training: Gumbel top-k with straight-through gradients,
# temperature 10 -> 0.1, the selection applied as the attention's key policy
# (token_train_mode='mask', the backbone's default) and Gumbel noise 1 -> 0 over training;
# the original zeroes the unselected tokens and keeps the noise at 1
# (model.backbone.token_train_mode='zero' with the hook's noise_end=1.0 restores it; on
# Fashion-MNIST 62.64 % top-1 against 76.04 % for this default, configs/svite/README.md).
# Inference: the 176 best-scored tokens are gathered, the others removed (fewer FLOPs, lower
# latency).
_base_ = ['./svite-deit-small_density0.5_8xb64_in1k.py']

model = dict(backbone=dict(type='mmsparse.SViTEVisionTransformer', token_keep=0.9))
custom_hooks = [
    dict(type='SparseTrainingHook', density=0.5, sparse_init='fixed_ERK', growth='gradient',
         update_interval=15000, stop_ratio=0.8, death_rate=0.5, death_rate_min=0.005),
    dict(type='TokenSelectorTemperatureHook', start=10.0, end=0.1),
]
