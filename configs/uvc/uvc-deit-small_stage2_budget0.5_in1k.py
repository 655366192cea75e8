# UVC stage 2 of DeiT-Small at budget 0.5: the architecture found in stage 1 is fixed (the masks
# and block decisions stored in its last checkpoint), then fine-tuned with soft distillation
# from the dense teacher (also in that checkpoint). The original recipe (post_train.py, README):
# 120 epochs, batch 256 per GPU, AdamW lr 1e-4 x total batch / 512 (run with --auto-scale-lr),
# 5 warm-up epochs from 1e-6, cosine per epoch to 1e-5, grad clip 1.0, alpha 0.1, no patch
# gating. At the end the physically smaller model is written to
# <work_dir>/uvc_compact.py + .pth (tools/test.py runs it).
#
#   tools/dist_train.sh configs/uvc/uvc-deit-small_stage2_budget0.5_in1k.py 2 --auto-scale-lr
_base_ = ['./uvc-deit-small_stage1_budget0.5_in1k.py']

max_epochs = 120
model = dict(backbone=dict(mode='fixed', patch_gating=False, warmup_block_keep=1.0))
# stage 1's last epoch: the end-of-search projection (UVCHook project_at_end) put its real FLOPs
# at or below the budget. The original starts from a stage-1 epoch picked by hand whose FLOPs
# matched the budget; to pick the epoch whose real FLOPs are closest to the budget (preferably
# not above it) instead:
#   load_from = None
#   custom_hooks = [dict(type='UVCClosestEpochHook',
#                        stage1_work_dir='work_dirs/uvc-deit-small_stage1_budget0.5_in1k'),
#                   dict(type='UVCHook'), dict(type='UVCCompactHook')]
load_from = 'work_dirs/uvc-deit-small_stage1_budget0.5_in1k/epoch_30.pth'

train_dataloader = dict(batch_size=256)
optim_wrapper = dict(
    _delete_=True,
    optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05, eps=1e-8, betas=(0.9, 0.999)),
    clip_grad=dict(max_norm=1.0),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0,
                       custom_keys={'.cls_token': dict(decay_mult=0.0),
                                    '.pos_embed': dict(decay_mult=0.0)}),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=True, begin=0, end=5),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=5, end=max_epochs),
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=1)
custom_hooks = [dict(type='UVCHook'), dict(type='UVCCompactHook')]
# skipped blocks have parameters the forward does not use
model_wrapper_cfg = dict(_delete_=True, type='MMDistributedDataParallel',
                         broadcast_buffers=False, find_unused_parameters=True)
auto_scale_lr = dict(base_batch_size=512)
