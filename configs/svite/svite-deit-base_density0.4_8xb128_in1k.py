# SViTE-Base: unstructured dynamic sparse training of DeiT-B from scratch on ImageNet-1k, with the
# original's recipe: 8 GPUs x 128 images, AdamW lr 5e-4 x 1024/512, wd 0.05, 5 warm-up epochs from
# 1e-6, cosine to 1e-5, 600 epochs, drop path 0.1, RandAugment, Mixup / CutMix, label smoothing,
# random erasing, repeated augmentation. Density 0.4 (ERK), updates every 7000 iterations until
# 80 % of training (death rate 0.5, cosine to 0.005, gradient growth).
# No EMA (the base config's EMAHook is dropped): it would validate a dense moving average.
_base_ = ['./svite-deit-small_density0.4_8xb64_in1k.py']

model = dict(backbone=dict(arch='deit-base'), head=dict(in_channels=768))
train_dataloader = dict(batch_size=128)

base_lr = 5e-4 * 128 * 8 / 512
optim_wrapper = dict(optimizer=dict(lr=base_lr))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6 / base_lr, by_epoch=True, begin=0, end=5,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=5, end={{_base_.max_epochs}},
         convert_to_iter_based=True),
]
auto_scale_lr = dict(base_batch_size=1024)
custom_hooks = [
    dict(type='SparseTrainingHook', density=0.4, sparse_init='fixed_ERK', growth='gradient',
         update_interval=7000, stop_ratio=0.8, death_rate=0.5, death_rate_min=0.005),
]
