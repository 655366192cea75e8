# SparseViT sparsity-aware adaptation of UperNet Swin-T on ADE20K: every iteration samples per-block
# window ratios (one of {0, 0.1, ..., 0.8} per W-MSA/SW-MSA pair, ascending within a stage).
#   tools/dist_train.sh configs/sparsevit/upernet_sparsevit-swin-t_saa_ade20k.py 8
_base_ = ['./upernet_sparsevit-swin-t_ade20k.py']

custom_hooks = [
    dict(type='mmsparse.SparsityAwareAdaptationHook',
         candidates=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], group_size=2),
    # the random streams (DropPath, RoI samplers, flips) in checkpoints: exact resume
    dict(type='mmsparse.RNGStateHook'),
]
