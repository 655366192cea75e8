# DynamicViT-DeiT-B, keep_rate rho = 0.7, on ImageNet-1k: the original recipe (README, main.py).
# Reported: 81.43 top-1 at 11.4 GFLOPs. It starts from the original's weights: Facebook's DeiT-B
# (deit_base_patch16_224-b5f2ef4d.pth) as converted in the model zoo (deit-base_3rdparty_in1k:
# 81.79 top-1 / 95.59 top-5 in mmpretrain's metafile; 81.8 in the DeiT paper, 17.6 GFLOPs).
# DeiT-B adds drop_path 0.2 and ratio_weight 5.0 (README, after issue #27: DeiT-B training is
# less stable).
#   tools/dist_train.sh configs/dynamicvit/dynamicvit-deit-base_8xb128_in1k.py 8
_base_ = ['./dynamicvit-deit-small_8xb128_in1k.py']

model = dict(
    backbone=dict(arch='deit-base', drop_path_rate=0.2),
    head=dict(in_channels=768),
    ratio_weight=5.0,
)
load_from = ('https://download.openmmlab.com/mmclassification/v0/deit/'
             'deit-base_3rdparty_pt-16xb64_in1k_20211124-6f40c188.pth')
