# SparseViT Mask R-CNN Swin-T on COCO: the shared settings of the SAA and cfg1/2/3 configs.
# mmdet's Swin-T Mask R-CNN (3x, AMP, DETR-style multi-scale + crop) with the backbone swapped for
# mmsparse's SparseSwinTransformer (same state_dict keys: mmdet checkpoints load unchanged),
# AdamW lr 1e-5, fp16 with loss scale 512, and SparseViT's test resize: 672x672, keep_ratio False
# (padded to /32 by the data preprocessor). With window_ratios None (all 0) it is the dense model.
_base_ = ['mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_amp-ms-crop-3x_coco.py']
custom_imports = dict(imports=['mmsparse'], allow_failed_imports=False)
default_scope = 'mmsparse'

window_ratios = None  # per stage, per block (or per W-MSA/SW-MSA pair); see cfg1/2/3
model = dict(
    backbone=dict(
        type='mmsparse.SparseSwinTransformer',
        window_ratios=window_ratios,
        # every weight comes from `load_from` (a dense or SAA Mask R-CNN); no ImageNet download
        init_cfg=None))

test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='Resize', scale=(672, 672), keep_ratio=False),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

# fp16 with a dynamic loss scale starting at 512, as the original (fp16 = dict(loss_scale=
# dict(init_scale=512))); a number here would be a static scale in MMEngine
optim_wrapper = dict(type='AmpOptimWrapper', loss_scale=dict(init_scale=512.),
                     optimizer=dict(lr=1e-5))
