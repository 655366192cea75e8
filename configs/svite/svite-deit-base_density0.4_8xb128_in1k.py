# SViTE-Base: unstructured dynamic sparse training of DeiT-B from scratch on ImageNet-1k, with the
# original's recipe: 8 GPUs x 128 images, AdamW lr 5e-4 x 1024/512, wd 0.05, 5 warm-up epochs from
# 1e-6, cosine to 1e-5, 600 epochs, drop path 0.1, RandAugment, Mixup / CutMix, label smoothing,
# random erasing, repeated augmentation. Density 0.4 (ERK), updates every 7000 iterations until
# 80 % of training (death rate 0.5, cosine to 0.005, gradient growth).
# No EMA (the base config's EMAHook is dropped): it would validate a dense moving average.
_base_ = ['mmpretrain::deit/deit-base_16xb64_in1k.py']
custom_imports = dict(imports=['mmsparse'], allow_failed_imports=False)
default_scope = 'mmsparse'

model = dict(backbone=dict(drop_path_rate=0.1))

train_dataloader = dict(
    batch_size=128,
    sampler=dict(type='RepeatAugSampler', shuffle=True, _scope_='mmpretrain'))

max_epochs = 600
base_lr = 5e-4 * 128 * 8 / 512
optim_wrapper = dict(optimizer=dict(type='AdamW', lr=base_lr, weight_decay=0.05))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6 / base_lr, by_epoch=True, begin=0, end=5,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=5, end=max_epochs,
         convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=1)
auto_scale_lr = dict(base_batch_size=1024)

custom_hooks = [
    dict(type='SparseTrainingHook', density=0.4, sparse_init='fixed_ERK', growth='gradient',
         update_interval=7000, stop_ratio=0.8, death_rate=0.5, death_rate_min=0.005),
]
