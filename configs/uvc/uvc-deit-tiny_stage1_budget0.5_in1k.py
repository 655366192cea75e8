# UVC stage 1 of DeiT-Tiny on ImageNet-1k at a FLOPs budget of 0.5: the DeiT-S recipe of
# uvc-deit-small_stage1_budget0.5_in1k.py (README: 2 GPUs x 512 images) on the model-zoo DeiT-T.
#
#   tools/dist_train.sh configs/uvc/uvc-deit-tiny_stage1_budget0.5_in1k.py 2
#   (then stage 2: configs/uvc/uvc-deit-tiny_stage2_budget0.5_in1k.py)
_base_ = ['./uvc-deit-small_stage1_budget0.5_in1k.py']

model = dict(backbone=dict(arch='deit-tiny'), head=dict(in_channels=192))
# the teacher is a frozen copy of these weights (taken at the first step)
load_from = ('https://download.openmmlab.com/mmclassification/v0/deit/'
             'deit-tiny_pt-4xb256_in1k_20220218-13b382a0.pth')
