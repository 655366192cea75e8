# SparseViT sparsity-aware adaptation of UperNet Swin-T on the three real VOC sample images (VOC
# class masks), on CPU in seconds: the test / demo version of
# upernet_sparsevit-swin-t_saa_ade20k.py.
_base_ = ['../swin/upernet_swin-t-p4-w7_voc-sample.py']

model = dict(backbone=dict(type='mmsparse.SparseSwinTransformer', window_ratios=None))
custom_hooks = [
    dict(type='mmsparse.SparsityAwareAdaptationHook',
         candidates=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], group_size=2),
    # the random streams (DropPath, RoI samplers, flips) in checkpoints: exact resume
    dict(type='mmsparse.RNGStateHook'),
]
