# UVC stage 2 of DeiT-Tiny at budget 0.5: fine-tunes the architecture found by
# uvc-deit-tiny_stage1_budget0.5_in1k.py with the recipe of uvc-deit-small_stage2_budget0.5_in1k.py,
# at 128 images per GPU (README).
#
#   tools/dist_train.sh configs/uvc/uvc-deit-tiny_stage2_budget0.5_in1k.py 2 --auto-scale-lr
_base_ = ['./uvc-deit-small_stage2_budget0.5_in1k.py']

model = dict(backbone=dict(arch='deit-tiny'), head=dict(in_channels=192))
# stage 1's last epoch (for the epoch closest to the budget instead, UVCClosestEpochHook: see
# uvc-deit-small_stage2_budget0.5_in1k.py)
load_from = 'work_dirs/uvc-deit-tiny_stage1_budget0.5_in1k/epoch_30.pth'
train_dataloader = dict(batch_size=128)
