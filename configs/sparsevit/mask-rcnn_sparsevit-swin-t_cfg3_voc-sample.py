# Mask R-CNN Swin-T with the fixed window ratios cfg3 on the three real VOC sample images (CPU).
_base_ = ['../swin/mask-rcnn_swin-t-p4-w7_fpn_voc-sample.py']

window_ratios = [[0.7, 0.7], [0, 0], [0.2, 0.2, 0.4, 0.4, 0.5, 0.5], [0, 0]]
model = dict(backbone=dict(type='mmsparse.SparseSwinTransformer', window_ratios=window_ratios))
