# Baseline for SViTE on Fashion-MNIST: one-shot magnitude pruning to density 0.5 (ERK per layer,
# the largest weights of the initialised model kept), then the same training budget as the
# SViTE config with the mask fixed (stop_ratio=0: no prune / regrow update ever runs).
# Measured here (top-1, 10k test images): 1 epoch, seeds 0 / 1 / 2: 79.12 / 80.63 / 81.15 (SViTE
# 79.11 / 80.03 / 80.86); 3 epochs (train_cfg.max_epochs=3 param_scheduler.1.end=3), seed 0: 84.93
# (SViTE 84.03). At these budgets the fixed ERK mask is at least as good as prune / regrow.
_base_ = ['./svite-vit-tiny-p4_density0.5_fashion-mnist.py']

custom_hooks = [
    dict(type='SparseTrainingHook', density=0.5, sparse_init='ERK', init_by='magnitude',
         update_interval=100, stop_ratio=0.0),
]
