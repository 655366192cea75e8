# DynamicViT-DeiT-T, keep_rate rho = 0.7, on ImageNet-1k: the original recipe (README, main.py).
# Starts from the model-zoo DeiT-T (load_from); the teacher is a frozen copy of that same model.
# Not in the original's README (it reports DeiT-256, DeiT-S, DeiT-B); the DeiT-S recipe.
#   tools/dist_train.sh configs/dynamicvit/dynamicvit-deit-tiny_8xb128_in1k.py 8
_base_ = ['mmpretrain::deit/deit-tiny_4xb256_in1k.py']
custom_imports = dict(imports=['mmsparse'], allow_failed_imports=False)
default_scope = 'mmsparse'

model = dict(
    type='mmsparse.DynamicViTClassifier',
    backbone=dict(
        type='mmsparse.DynamicVisionTransformer',
        arch='deit-tiny',
        img_size=224,
        patch_size=16,
        drop_path_rate=0.0,
        pruning_loc=[3, 6, 9],  # predictors before blocks 3, 6, 9
        keep_rate=0.7,  # keep 0.7, 0.49, 0.343 of the 196 patches: 137, 96, 67 at inference
    ),
    # teacher=None: a frozen dense copy of the model as loaded from load_from
    ratio_weight=2.0,
    distill_weight=0.5,
    token_distill_weight=0.5,
)
load_from = ('https://download.openmmlab.com/mmclassification/v0/deit/'
             'deit-tiny_pt-4xb256_in1k_20220218-13b382a0.pth')

# 8 GPUs x 128 = 1024 images per step; the lr is absolute (no batch scaling), as in the original
train_dataloader = dict(batch_size=128)
max_epochs = 30
warmup_epochs = 5
optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05, eps=1e-8, betas=(0.9, 0.999)),
    # one param group per parameter (needed by DynamicViTOptimHook); 1-D params: no decay;
    # cls_token / pos_embed are frozen (requires_grad=False) and not in the optimizer
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0, flat_decay_mult=0.0),
    clip_grad=None,
)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=True, begin=0, end=warmup_epochs,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-6, by_epoch=True, begin=warmup_epochs,
         end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=1)
auto_scale_lr = dict(base_batch_size=1024)
custom_hooks = [
    # predictors at the full lr; backbone and head at 0.01 x lr, and lr 0 for the first 5 epochs
    dict(type='mmsparse.DynamicViTOptimHook', backbone_lr_scale=0.01, freeze_backbone=5,
         by_epoch=True),
    # model EMA, decay 0.9999
    dict(type='EMAHook', momentum=1e-4, priority='ABOVE_NORMAL', _scope_='mmpretrain'),
    dict(type='mmsparse.RNGStateHook'),
]
