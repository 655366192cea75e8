# DynamicViT-DeiT-T, keep_rate rho = 0.7, on ImageNet-1k: the DeiT-S recipe on the model-zoo DeiT-T
# (not in the original's README, which reports DeiT-256, DeiT-S, DeiT-B). The start is OpenMMLab's
# own DeiT-T (deit-tiny_4xb256_in1k: 74.50 top-1 / 92.24 top-5 in mmpretrain's metafile; the zoo
# has no converted copy of Facebook's DeiT-T, 72.2 in the DeiT paper).
#   tools/dist_train.sh configs/dynamicvit/dynamicvit-deit-tiny_8xb128_in1k.py 8
_base_ = ['./dynamicvit-deit-small_8xb128_in1k.py']

model = dict(backbone=dict(arch='deit-tiny'), head=dict(in_channels=192))
load_from = ('https://download.openmmlab.com/mmclassification/v0/deit/'
             'deit-tiny_pt-4xb256_in1k_20220218-13b382a0.pth')
