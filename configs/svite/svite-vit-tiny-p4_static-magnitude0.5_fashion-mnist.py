# Baseline for SViTE on Fashion-MNIST: one-shot magnitude pruning to density 0.5 (ERK per layer,
# the largest weights of the initialised model kept), then the same training budget as the
# SViTE config with the mask fixed (stop_ratio=0: no prune / regrow update ever runs).
_base_ = ['./svite-vit-tiny-p4_density0.5_fashion-mnist.py']

custom_hooks = [
    dict(type='SparseTrainingHook', density=0.5, sparse_init='ERK', init_by='magnitude',
         update_interval=100, stop_ratio=0.0),
]
