# UVC stage 1 of DeiT-Small on ImageNet-1k at a FLOPs budget of 0.58 (README: 79.44 % top-1 at
# 57.61 % FLOPs), otherwise the recipe of uvc-deit-small_stage1_budget0.5_in1k.py.
#
#   tools/dist_train.sh configs/uvc/uvc-deit-small_stage1_budget0.58_in1k.py 2
#   (then stage 2: configs/uvc/uvc-deit-small_stage2_budget0.58_in1k.py)
_base_ = ['./uvc-deit-small_stage1_budget0.5_in1k.py']

budget = 0.58
model = dict(budget=budget)
