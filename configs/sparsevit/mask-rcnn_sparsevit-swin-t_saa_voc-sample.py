# SparseViT sparsity-aware adaptation of Mask R-CNN Swin-T on the three real VOC sample images
# (COCO instance masks), on CPU in seconds: the test / demo version of
# mask-rcnn_sparsevit-swin-t_saa_coco.py. At 224x224 the stages have 8x8, 4x4, 2x2, 1x1 windows.
_base_ = ['../swin/mask-rcnn_swin-t-p4-w7_fpn_voc-sample.py']

model = dict(backbone=dict(type='mmsparse.SparseSwinTransformer', window_ratios=None))
custom_hooks = [
    dict(type='mmsparse.SparsityAwareAdaptationHook',
         candidates=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], group_size=2),
    # the random streams (DropPath, RoI samplers, flips) in checkpoints: exact resume
    dict(type='mmsparse.RNGStateHook'),
]
