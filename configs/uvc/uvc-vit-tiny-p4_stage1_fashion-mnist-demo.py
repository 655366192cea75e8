# `make demo`'s UVC stage 1: uvc-vit-tiny-p4_stage1_fashion-mnist.py on the first 6400
# training images (100 steps, no validation during training), so that the UVC rows of the
# demo take about a minute and a half on 2 CPU cores. The demo starts it from its dense row.
_base_ = ['./uvc-vit-tiny-p4_stage1_fashion-mnist.py']

train_dataloader = dict(dataset=dict(indices=6400))
# no validation during training (the demo tests every row on the 10k test images anyway)
train_cfg = dict(val_interval=2)
val_dataloader = None
val_cfg = None
val_evaluator = None
default_hooks = dict(checkpoint=dict(save_best=None))
