# SparseViT step 3, fine-tuning with the searched window ratios cfg3 (the paper's "<= 33 ms" Swin-T
# configuration on an RTX A6000, backbone at 672x672, batch 4): 36 epochs, step LR at [27, 33],
# the schedule of mask-rcnn_sparsevit-swin-t_cfg1_coco.py.
#   tools/dist_train.sh configs/sparsevit/mask-rcnn_sparsevit-swin-t_cfg3_coco.py 8
#   python tools/analysis_tools/measure_latency.py \
#       configs/sparsevit/mask-rcnn_sparsevit-swin-t_cfg3_coco.py \
#       --part backbone --img-size 672 --batch-size 4
_base_ = ['./mask-rcnn_sparsevit-swin-t_cfg1_coco.py']

window_ratios = [[0.7, 0.7], [0, 0], [0.2, 0.2, 0.4, 0.4, 0.5, 0.5], [0, 0]]
model = dict(backbone=dict(window_ratios=window_ratios))
