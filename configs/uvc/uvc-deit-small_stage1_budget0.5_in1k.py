# UVC stage 1 (joint search by primal-dual optimisation) of DeiT-Small on ImageNet-1k at a FLOPs
# budget of 0.5, with the original recipe (VITA-Group/UVC run_uvc_train.sh / README):
# 30 epochs, 5 warm-up epochs with the architecture frozen, AdamW lr 1e-4 wd 0.05 (500 warm-up
# iterations, then cosine), grad clip 1.0, budget 0.5, block gating (Gumbel, tau 0.5, gating
# weight 5e-4, glr 0.1, interval 50), patch gating on (README; the released DeiT-T log has it
# off), z_grad_clip 0.5, slr = rlr = 0.02, ylr = plr = 1e-4, the budget dual's step size raised
# at epochs 0/6/12/18/24 to 1/5/9/13/17 (the original's *intended* zlr schedule, which its code
# never applies: see mmsparse/engine/uvc_optim.py), soft distillation (alpha 0.1, tau 1) from
# the same pretrained DeiT, RandomResizedCrop + flip, Mixup 0.8 / CutMix 1.0 with prob 0.8,
# label smoothing 0.1, seed 730. README: 2 GPUs x 512 images (the released DeiT-S logs: 8 GPUs).
#
#   tools/dist_train.sh configs/uvc/uvc-deit-small_stage1_budget0.5_in1k.py 2
#   (then stage 2: configs/uvc/uvc-deit-small_stage2_budget0.5_in1k.py)
_base_ = ['mmpretrain::deit/deit-small_4xb256_in1k.py']
custom_imports = dict(imports=['mmsparse'], allow_failed_imports=False)
default_scope = 'mmsparse'

budget = 0.5
max_epochs = 30
model = dict(
    type='mmsparse.UVCClassifier',
    budget=budget,
    warmup_epochs=5,
    distill=True,
    distill_alpha=0.1,
    distill_tau=1.0,
    gating_weight=5e-4,
    gating_interval=50,
    dual_init=1e-3,
    # the original's gate step: the i-th gate gradient of an interval weighted by i
    # (global_step % 50), and the gates also in the weights' AdamW
    gate_step='original',
    arch_grad_clip=1.0,
    arch_grad_clip_joint=True,  # heads + neurons clipped as one tensor (the original's s)
    removed_head_dims='included',  # every head's lowest dims shrink by p, removed heads' too
    resource_clip=0.5,  # the original's z_grad_clip
    backbone=dict(
        type='mmsparse.UVCVisionTransformer',
        mode='search',
        block_gating='gumbel',
        gumbel_tau=0.5,
        gumbel_hard=False,
        gate_init=(-1.0, 1.0),
        warmup_block_keep=0.5,  # the original runs d = (0.5, 0.5) during the warm-up
        patch_gating=True,
        patch_gating_init=3.0,
    ),
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8), dict(type='CutMix', alpha=1.0)],
                   probs=[0.4, 0.4]),
)
# the teacher is a frozen copy of these weights (taken at the first step)
load_from = ('https://download.openmmlab.com/mmclassification/v0/deit/'
             'deit-small_pt-4xb256_in1k_20220218-9425b9bb.pth')

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=224, backend='pillow', interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
train_dataloader = dict(batch_size=512, dataset=dict(pipeline=train_pipeline))

optim_wrapper = dict(
    _delete_=True,
    constructor='UVCOptimWrapperConstructor',
    # the original: AdamW(model.parameters(), weight_decay=0.05), i.e. weight decay on every
    # parameter (norms, biases, cls_token, pos_embed, patch and block gates included)
    weights=dict(
        optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05, eps=1e-8, betas=(0.9, 0.999)),
        clip_grad=dict(max_norm=1.0)),
    arch=dict(optimizer=dict(type='SGD', lr=0.02)),  # slr = rlr
    gates=dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=1e-4)),  # glr
    duals=dict(optimizer=dict(type='SGD', lr=1e-4)),  # ylr = plr
    flops_dual=dict(optimizer=dict(type='SGD', lr=1.0)),  # zlr (scheduled below)
)
param_scheduler = dict(
    _delete_=True,
    weights=[
        dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=500),
        dict(type='CosineAnnealingLR', eta_min=0.0, by_epoch=True, begin=0, end=max_epochs,
             convert_to_iter_based=True),
    ],
    arch=[], gates=[], duals=[],
    flops_dual=[dict(type='PresetLR', by_epoch=True, milestones=[0, 6, 12, 18, 24],
                     values=[1.0, 5.0, 9.0, 13.0, 17.0])],
)
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=1)
# at the end of the search: meet the budget exactly if the dynamics left it above, and round
# kept neurons / value dims to multiples of 8 (GEMM-friendly; lowers the FLOPs a little more)
custom_hooks = [dict(type='UVCHook', project_at_end=True, round_to=8)]
# distributed: the primal-dual train_step is the model's own, so the wrapper must call it
model_wrapper_cfg = dict(type='mmsparse.UVCDistributedDataParallel')
randomness = dict(seed=730)
auto_scale_lr = dict(base_batch_size=1024)
