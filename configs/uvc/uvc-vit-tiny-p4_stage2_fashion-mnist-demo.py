# `make demo`'s UVC stage 2: uvc-vit-tiny-p4_stage2_fashion-mnist.py on the first 9600 training
# images (150 steps, no validation during training). The demo starts it from its UVC stage-1
# row; at the end the compact model replaces the masked one (UVCCompactHook swap_model), so the
# demo tests and profiles the physically smaller model.
_base_ = ['./uvc-vit-tiny-p4_stage2_fashion-mnist.py']

load_from = 'work_dirs/uvc-vit-tiny-p4_stage1_fashion-mnist-demo/epoch_1.pth'
train_dataloader = dict(dataset=dict(indices=9600))
# no validation during training (the demo tests every row on the 10k test images anyway)
train_cfg = dict(val_interval=2)
val_dataloader = None
val_cfg = None
val_evaluator = None
default_hooks = dict(checkpoint=dict(save_best=None))
custom_hooks = [dict(type='UVCHook'), dict(type='UVCCompactHook', swap_model=True)]
