# The dense demo model: a small ViT (mmpretrain's VisionTransformer: 6 blocks, width 96, 3 heads,
# 7x7 patches of 4x4 pixels + a class token) trained from scratch on real Fashion-MNIST on CPU.
# Every method's Fashion-MNIST config starts from this model.
_base_ = [
    'mmpretrain::_base_/default_runtime.py',
    '../_base_/datasets/fashion_mnist.py',
]
custom_imports = dict(imports=['mmsparse'], allow_failed_imports=False)
default_scope = 'mmsparse'

model = dict(
    type='ImageClassifier',
    _scope_='mmpretrain',
    data_preprocessor={{_base_.data_preprocessor}},
    backbone=dict(
        type='VisionTransformer',
        arch=dict(embed_dims=96, num_layers=6, num_heads=3, feedforward_channels=384),
        img_size=28,
        patch_size=4,
        in_channels=1,
        out_type='cls_token',
        drop_path_rate=0.0,
        init_cfg=[dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.0),
                  dict(type='Constant', layer='LayerNorm', val=1.0, bias=0.0)],
    ),
    head=dict(
        type='VisionTransformerClsHead',
        num_classes=10,
        in_channels=96,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
    ),
)

# One pass over the 60k training images: ~3 min on 2 CPU cores.
max_epochs = 1
train_dataloader = dict(batch_size=64)
optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=2e-3, weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0,
                       custom_keys={'.cls_token': dict(decay_mult=0.0),
                                    '.pos_embed': dict(decay_mult=0.0)}),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=40),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=0, end=max_epochs,
         convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=1)
val_cfg = dict()
test_cfg = dict()
auto_scale_lr = dict(base_batch_size=64)

default_hooks = dict(
    logger=dict(interval=50),
    checkpoint=dict(interval=1, max_keep_ckpts=2, save_best='auto'),
    # tools/test.py --show-dir: the 28x28 images drawn at 224x224, so that the labels are legible
    visualization=dict(resize=224),
)
randomness = dict(seed=0, deterministic=False)
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='nccl'))
