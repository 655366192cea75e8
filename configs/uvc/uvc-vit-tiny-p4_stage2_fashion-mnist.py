# UVC stage 2 on Fashion-MNIST: the architecture found by
# uvc-vit-tiny-p4_stage1_fashion-mnist.py is fixed (masks and block decisions from its
# checkpoint) and fine-tuned with distillation from the dense teacher (saved in that
# checkpoint) for one epoch; then the physically smaller model is written to
# <work_dir>/uvc_compact.py + .pth (tools/test.py runs it).
_base_ = ['./uvc-vit-tiny-p4_stage1_fashion-mnist.py']

model = dict(backbone=dict(mode='fixed'))
load_from = 'work_dirs/uvc-vit-tiny-p4_stage1_fashion-mnist/epoch_1.pth'

max_epochs = 1
optim_wrapper = dict(
    _delete_=True,
    optimizer=dict(type='AdamW', lr=5e-4, weight_decay=0.05),
    clip_grad=dict(max_norm=1.0),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0,
                       custom_keys={'.cls_token': dict(decay_mult=0.0),
                                    '.pos_embed': dict(decay_mult=0.0)}),
)
param_scheduler = [dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=0,
                        end=max_epochs, convert_to_iter_based=True)]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=1)
custom_hooks = [dict(type='UVCHook'), dict(type='UVCCompactHook')]
# skipped blocks have parameters the forward does not use
model_wrapper_cfg = dict(_delete_=True, type='MMDistributedDataParallel',
                         broadcast_buffers=False, find_unused_parameters=True)
