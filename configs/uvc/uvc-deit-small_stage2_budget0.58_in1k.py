# UVC stage 2 of DeiT-Small at budget 0.58: fine-tunes the architecture found by
# uvc-deit-small_stage1_budget0.58_in1k.py with the recipe of
# uvc-deit-small_stage2_budget0.5_in1k.py.
#
#   tools/dist_train.sh configs/uvc/uvc-deit-small_stage2_budget0.58_in1k.py 2 --auto-scale-lr
_base_ = ['./uvc-deit-small_stage2_budget0.5_in1k.py']

budget = 0.58
model = dict(budget=budget)
# stage 1's last epoch (for the epoch closest to the budget instead, UVCClosestEpochHook: see
# uvc-deit-small_stage2_budget0.5_in1k.py)
load_from = 'work_dirs/uvc-deit-small_stage1_budget0.58_in1k/epoch_30.pth'
