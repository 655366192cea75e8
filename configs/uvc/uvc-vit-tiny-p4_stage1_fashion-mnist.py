# UVC stage 1 (joint search by primal-dual optimisation) of the dense demo ViT on real
# Fashion-MNIST at a budget of 0.5 of the dense FLOPs: one epoch over the 60k training images,
# starting from the dense demo checkpoint (`make demo`, or `python tools/train.py
# configs/vit/vit-tiny-p4_fashion-mnist.py --work-dir work_dirs/demo/vit-tiny-p4_fashion-mnist`).
#
# Differences from the ImageNet recipe (configs/uvc/uvc-deit-*_stage1_*), for a search of a few
# hundred steps on a tiny model: no warm-up epochs; the architecture steps in FLOPs
# coordinates (arch_precondition='flops') on sum-normalised scores (score_normalize='sum'), so
# heads, value dims and neurons compete by importance per FLOP; the budget constraint uses an
# augmented Lagrangian (resource_penalty) so the FLOPs settle at the budget instead of
# overshooting; the least sums' slope changes half-way between hard architectures
# (least_sum_slope='nearest'), so a head whose balance point lies between "kept" and "removed"
# stops toggling every step; duals start at 0.1; gates updated every 10 steps; distillation
# alpha 0.5.
# Measured (first 600 steps): with the original slope and resource_penalty=40 every block flipped
# between 3 and 2 heads on alternate steps (real FLOPs 0.45 <-> 0.56, the end-of-search
# projection then cut 0.06); with 'nearest' and resource_penalty=5 the heads settle one block
# at a time and the real FLOPs stay at 0.50-0.51 (budget 0.5); resource_penalty=0 overshoots to
# 0.23 in the first 150 steps.
_base_ = ['../vit/vit-tiny-p4_fashion-mnist.py']

budget = 0.5
model = dict(
    type='mmsparse.UVCClassifier',
    budget=budget,
    warmup_epochs=0,
    distill_alpha=0.5,
    distill_tau=1.0,
    gating_weight=5e-4,
    gating_interval=10,
    dual_init=0.1,
    arch_grad_clip=2.0,
    arch_precondition='flops',
    score_normalize='sum',
    resource_penalty=5.0,
    least_sum_slope='nearest',
    backbone=dict(
        type='mmsparse.UVCVisionTransformer',
        mode='search',
        block_gating='gumbel',
        gumbel_tau=0.5,
        gate_init=(-1.0, 1.0),
        patch_gating=False,
    ),
)
load_from = 'work_dirs/demo/vit-tiny-p4_fashion-mnist/epoch_1.pth'

max_epochs = 1
train_dataloader = dict(batch_size=64)
optim_wrapper = dict(
    _delete_=True,
    constructor='UVCOptimWrapperConstructor',
    weights=dict(
        optimizer=dict(type='AdamW', lr=2e-4, weight_decay=0.05),
        clip_grad=dict(max_norm=1.0),
        paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0,
                           custom_keys={'.cls_token': dict(decay_mult=0.0),
                                        '.pos_embed': dict(decay_mult=0.0)})),
    # s (heads, neurons) and r (value dims): projected SGD in FLOPs coordinates; the lr is the
    # FLOPs fraction one variable may move per step at a unit gradient
    arch=dict(optimizer=dict(type='SGD', lr=5e-4)),
    gates=dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=1e-4)),
    duals=dict(optimizer=dict(type='SGD', lr=1e-4)),
    flops_dual=dict(optimizer=dict(type='SGD', lr=0.1)),
)
param_scheduler = dict(
    _delete_=True,
    weights=[dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=0,
                  end=max_epochs, convert_to_iter_based=True)],
    arch=[], gates=[], duals=[],
    # the budget dual's step size at given epochs (the original's intended zlr schedule; with
    # one epoch here only the first value applies)
    flops_dual=[dict(type='PresetLR', by_epoch=True, milestones=[0], values=[0.1])],
)
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=1)
custom_hooks = [dict(type='UVCHook')]
# multi-process: a wrapper that calls the model's own primal-dual train_step
model_wrapper_cfg = dict(type='mmsparse.UVCDistributedDataParallel')
default_hooks = dict(logger=dict(interval=50))
