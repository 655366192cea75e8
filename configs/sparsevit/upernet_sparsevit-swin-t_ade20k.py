# SparseViT UperNet Swin-T on ADE20K: the shared settings of the SAA and cfg3 configs.
# mmseg's UperNet Swin-T (512x512 crops) with the backbone swapped for mmsparse's
# SparseSwinTransformer (same state_dict keys: mmseg checkpoints load unchanged). SparseViT's code
# has no segmentation recipe; this one is mmsparse's: fine-tune the dense model-zoo UperNet for 40k
# iterations at a tenth of its learning rate (6e-6), as the detection recipe does (1e-5 vs 1e-4).
_base_ = ['mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py']
custom_imports = dict(imports=['mmsparse'], allow_failed_imports=False)
default_scope = 'mmsparse'

window_ratios = None
model = dict(
    backbone=dict(type='mmsparse.SparseSwinTransformer', window_ratios=window_ratios,
                  init_cfg=None))  # every weight comes from `load_from`

max_iters = 40000
optim_wrapper = dict(optimizer=dict(lr=6e-6))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=max_iters, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=4000)
default_hooks = dict(checkpoint=dict(by_epoch=False, interval=4000))
load_from = ('https://download.openmmlab.com/mmsegmentation/v0.5/swin/'
             'upernet_swin_tiny_patch4_window7_512x512_160k_ade20k_pretrain_224x224_1K/'
             'upernet_swin_tiny_patch4_window7_512x512_160k_ade20k_pretrain_224x224_1K_'
             '20210531_112542-e380ad3e.pth')
