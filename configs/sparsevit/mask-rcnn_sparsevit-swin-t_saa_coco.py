# SparseViT step 1, sparsity-aware adaptation (SAA): fine-tune a dense Swin-T Mask R-CNN while every
# iteration samples new per-block window ratios (per stage, one of {0, 0.1, ..., 0.8} per
# W-MSA/SW-MSA pair, sorted ascending within the stage; identical on every rank, reproducible from
# the seed). 12 epochs, step LR at [8, 11], 1000 warm-up iterations, AdamW lr 1e-5, 2 img/GPU x 8.
# Validation uses the backbone's fixed window_ratios (dense here; set the hook's val_ratios).
#   tools/dist_train.sh configs/sparsevit/mask-rcnn_sparsevit-swin-t_saa_coco.py 8
_base_ = ['./mask-rcnn_sparsevit-swin-t_coco.py']

custom_hooks = [
    dict(type='mmsparse.SparsityAwareAdaptationHook',
         candidates=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], group_size=2),
    # the random streams (DropPath, RoI samplers, flips) in checkpoints: exact resume
    dict(type='mmsparse.RNGStateHook'),
]

max_epochs = 12
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[8, 11],
         gamma=0.1),
]
# The dense starting point: mmdet's Swin-T Mask R-CNN, 3x fp16 multi-scale + crop (the original
# started from its own 3x training at epoch 20).
load_from = ('https://download.openmmlab.com/mmdetection/v2.0/swin/'
             'mask_rcnn_swin-t-p4-w7_fpn_fp16_ms-crop-3x_coco/'
             'mask_rcnn_swin-t-p4-w7_fpn_fp16_ms-crop-3x_coco_20210908_165006-90a4008c.pth')
