# SViTE-Small: unstructured dynamic sparse training of DeiT-S from scratch on ImageNet-1k, with the
# original's recipe (VITA-Group/SViTE cmd scripts): 8 GPUs x 64 images, AdamW lr 5e-4 x 512/512,
# wd 0.05, 5 warm-up epochs from 1e-6, cosine to 1e-5, 600 epochs, drop path 0.1, RandAugment,
# Mixup 0.8 / CutMix 1.0, label smoothing 0.1, random erasing 0.25, repeated augmentation.
# Sparsity: 40 % of the patch-embed, qkv, proj, fc1, fc2 and head weights kept (ERK per layer,
# Bernoulli init), every 15000 iterations (~6 epochs at 2502 it/epoch) until 80 % of training:
# magnitude death (rate 0.5, cosine to 0.005) and gradient (RigL) growth.
# No EMA: mmengine's EMAHook would validate a dense moving average, not the sparse model.
_base_ = ['mmpretrain::deit/deit-small_4xb256_in1k.py']
custom_imports = dict(imports=['mmsparse'], allow_failed_imports=False)
default_scope = 'mmsparse'

model = dict(backbone=dict(drop_path_rate=0.1))

train_dataloader = dict(
    batch_size=64,
    sampler=dict(type='RepeatAugSampler', shuffle=True, _scope_='mmpretrain'))

max_epochs = 600
base_lr = 5e-4 * 64 * 8 / 512
# no gradient clipping: the original's --clip-grad defaults to None and its scripts never set it
# (mmpretrain's DeiT config, the base here, clips at max_norm 5.0)
optim_wrapper = dict(optimizer=dict(type='AdamW', lr=base_lr, weight_decay=0.05), clip_grad=None)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6 / base_lr, by_epoch=True, begin=0, end=5,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=5, end=max_epochs,
         convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=1)
auto_scale_lr = dict(base_batch_size=512)

custom_hooks = [
    dict(type='SparseTrainingHook', density=0.4, sparse_init='fixed_ERK', growth='gradient',
         update_interval=15000, stop_ratio=0.8, death_rate=0.5, death_rate_min=0.005),
]
