# DynamicViT-DeiT-S, keep_rate rho = 0.7, on ImageNet-1k: the original recipe (README, main.py).
# Reported by the original: 79.32 top-1 at 2.9 GFLOPs, from Facebook's DeiT-S
# (deit_small_patch16_224-cd65a155.pth, 79.8 top-1 at 4.6 GFLOPs). The OpenMMLab model zoo has no
# converted copy of those weights, so this starts from OpenMMLab's own DeiT-S
# (deit-small_4xb256_in1k: 80.69 top-1 / 95.06 top-5 in mmpretrain's metafile), 0.9 above the
# original's start; the teacher is a frozen copy of that same model.
#   tools/dist_train.sh configs/dynamicvit/dynamicvit-deit-small_8xb128_in1k.py 8
_base_ = ['mmpretrain::deit/deit-small_4xb256_in1k.py']
custom_imports = dict(imports=['mmsparse'], allow_failed_imports=False)
default_scope = 'mmsparse'

model = dict(
    type='mmsparse.DynamicViTClassifier',
    backbone=dict(
        type='mmsparse.DynamicVisionTransformer',
        arch='deit-small',
        img_size=224,
        patch_size=16,
        drop_path_rate=0.0,
        pruning_loc=[3, 6, 9],  # predictors before blocks 3, 6, 9
        keep_rate=0.7,  # keep 0.7, 0.49, 0.343 of the 196 patches: 137, 96, 67 at inference
        policy_max_gap=None,  # the original's policy softmax in training (README table)
    ),
    # teacher=None: a frozen dense copy of the model as loaded from load_from
    ratio_weight=2.0,
    distill_weight=0.5,
    token_distill_weight=0.5,
)
load_from = ('https://download.openmmlab.com/mmclassification/v0/deit/'
             'deit-small_pt-4xb256_in1k_20220218-9425b9bb.pth')

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
    # model EMA, decay 0.9999. As the original, every validation runs on both the EMA and the raw
    # weights: the EMA's metrics under the usual names (accuracy/top1, what save_best reads),
    # the raw model's with the suffix _origin (accuracy/top1_origin); tools/test.py reports both
    # too. Checkpoints hold the EMA weights in state_dict, the raw ones in ema_state_dict.
    dict(type='EMAHook', momentum=1e-4, priority='ABOVE_NORMAL', evaluate_on_ema=True,
         evaluate_on_origin=True, _scope_='mmpretrain'),
    dict(type='mmsparse.RNGStateHook'),
]
