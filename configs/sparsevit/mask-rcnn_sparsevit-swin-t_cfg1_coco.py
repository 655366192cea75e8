# SparseViT step 3, fine-tuning with the searched window ratios cfg1 (the paper's "<= 42 ms" Swin-T
# configuration on an RTX A6000, backbone at 672x672, batch 4): 36 epochs, step LR at [27, 33],
# 1000 warm-up iterations, AdamW lr 1e-5, starting from the SAA model's epoch 12.
#   tools/dist_train.sh configs/sparsevit/mask-rcnn_sparsevit-swin-t_cfg1_coco.py 8
#   python tools/analysis_tools/measure_latency.py \
#       configs/sparsevit/mask-rcnn_sparsevit-swin-t_cfg1_coco.py \
#       --part backbone --img-size 672 --batch-size 4
_base_ = ['./mask-rcnn_sparsevit-swin-t_coco.py']

window_ratios = [[0.3, 0.3], [0, 0], [0.1, 0.1, 0.2, 0.2, 0.2, 0.2], [0, 0]]
model = dict(backbone=dict(window_ratios=window_ratios))

max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[27, 33],
         gamma=0.1),
]
load_from = './work_dirs/mask-rcnn_sparsevit-swin-t_saa_coco/epoch_12.pth'
