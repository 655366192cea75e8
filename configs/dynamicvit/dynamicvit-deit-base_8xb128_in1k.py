# DynamicViT-DeiT-B, keep_rate rho = 0.7, on ImageNet-1k: the original recipe (README, main.py).
# Reported: 81.43 top-1 at 11.4 GFLOPs (DeiT-B: 81.8, 17.6 GFLOPs). DeiT-B adds drop_path 0.2 and
# ratio_weight 5.0 (README, after issue #27: DeiT-B training is less stable).
#   tools/dist_train.sh configs/dynamicvit/dynamicvit-deit-base_8xb128_in1k.py 8
_base_ = ['./dynamicvit-deit-small_8xb128_in1k.py']

model = dict(
    backbone=dict(arch='deit-base', drop_path_rate=0.2),
    head=dict(in_channels=768),
    ratio_weight=5.0,
)
load_from = ('https://download.openmmlab.com/mmclassification/v0/deit/'
             'deit-base_pt-16xb64_in1k_20220216-db63c16c.pth')
