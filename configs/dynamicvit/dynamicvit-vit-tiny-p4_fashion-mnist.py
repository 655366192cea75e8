# DynamicViT (keep_rate rho = 0.7) fine-tuned from the dense demo model on real Fashion-MNIST (CPU).
# `make demo` passes the dense row's checkpoint as `load_from`; by hand:
#   python tools/train.py configs/dynamicvit/dynamicvit-vit-tiny-p4_fashion-mnist.py \
#       --cfg-options load_from=work_dirs/demo/vit-tiny-p4_fashion-mnist/epoch_1.pth
#
# Pruning before blocks 1, 3 and 5 of the 6: the original prunes DeiT's 12 blocks before 3, 6, 9
# (three stages, cumulative ratios rho, rho^2, rho^3); [1, 3, 5] keeps three stages, one every two
# blocks, and the same share of the token-blocks (~62% of dense, DeiT-S: 63%). Kept patch tokens
# at inference (of 49): 34, 24, 16, plus the class token.
_base_ = ['../vit/vit-tiny-p4_fashion-mnist.py']

model = dict(
    type='mmsparse.DynamicViTClassifier',
    backbone=dict(type='mmsparse.DynamicVisionTransformer', pruning_loc=[1, 3, 5],
                  keep_rate=0.7),
    # teacher=None: a frozen dense copy of the model as loaded (load_from)
    ratio_weight=2.0,
    distill_weight=0.5,
    token_distill_weight=0.5,
)

# A short fine-tuning: one pass over 19,200 of the 60k training images (150 iterations of 128),
# ~2 min on 2 CPU cores (the teacher adds a forward pass per step). No validation during training
# (make demo tests the model once at the end).
train_dataloader = dict(batch_size=128, dataset=dict(indices=19200))
max_epochs = 1
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=1)
val_dataloader = None
val_cfg = None
val_evaluator = None

# The original trains the predictors at the full lr and the backbone at 0.01x, with the backbone
# frozen for its first 5 of 30 epochs. This schedule is ~250x shorter: it is all frozen phase, i.e.
# the predictors learn on the dense model (freeze_backbone=1 epoch), at a constant lr of 1e-2 after
# a 10-iteration warm-up (a decaying or lower lr leaves the predictors' ranking no better than
# random in 150 steps; backbone updates this short mostly adapt it to the near-random masks of the
# untrained predictors).
optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=1e-2, weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0, flat_decay_mult=0.0),
)
param_scheduler = [dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=10)]
auto_scale_lr = dict(base_batch_size=128)
custom_hooks = [
    dict(type='mmsparse.DynamicViTOptimHook', backbone_lr_scale=0.01, freeze_backbone=1,
         by_epoch=True),
    dict(type='mmsparse.RNGStateHook'),
]
default_hooks = dict(logger=dict(interval=25), checkpoint=dict(save_best=None))
