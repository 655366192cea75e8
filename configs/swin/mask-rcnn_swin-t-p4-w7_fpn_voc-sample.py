# Mask R-CNN with a Swin-T backbone (mmdet's model-zoo config) on the three real VOC sample images:
# the detection host that SparseViT plugs into. Runs on CPU; for real training use the model-zoo
# config with COCO and `load_from` a model-zoo checkpoint.
_base_ = [
    'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py',
]
custom_imports = dict(imports=['mmsparse'], allow_failed_imports=False)
default_scope = 'mmsparse'

# Three real PASCAL VOC images with COCO instance masks (Debian package labelme-examples), unpacked
# by `make install` into $MMSPARSE_DATA/voc_sample. Small enough to train on CPU in seconds.
data_root = '{{$MMSPARSE_DATA:data}}/voc_sample/'
# The annotation file also lists category 0 '_background_'; naming the 20 VOC classes here makes
# mmdet's CocoDataset and CocoMetric skip it.
voc_classes = ('aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair',
               'cow', 'diningtable', 'dog', 'horse', 'motorbike', 'person', 'potted plant',
               'sheep', 'sofa', 'train', 'tv/monitor')
metainfo = dict(classes=voc_classes)
img_scale = (224, 224)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    _delete_=True,
    batch_size=2,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=True),
    batch_sampler=dict(type='AspectRatioBatchSampler', _scope_='mmdet'),
    dataset=dict(type='CocoDataset', _scope_='mmdet', data_root=data_root, metainfo=metainfo,
                 ann_file='annotations.json', data_prefix=dict(img=''),
                 filter_cfg=dict(filter_empty_gt=True, min_size=8), pipeline=train_pipeline),
)
val_dataloader = dict(
    _delete_=True,
    batch_size=1,
    num_workers=0,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='CocoDataset', _scope_='mmdet', data_root=data_root, metainfo=metainfo,
                 ann_file='annotations.json', data_prefix=dict(img=''), test_mode=True,
                 pipeline=test_pipeline),
)
test_dataloader = val_dataloader
val_evaluator = dict(_delete_=True, type='CocoMetric', _scope_='mmdet',
                     ann_file=data_root + 'annotations.json', metric=['bbox', 'segm'],
                     format_only=False)
test_evaluator = val_evaluator

model = dict(
    # No network here: the ImageNet-pretrained Swin-T is not downloaded (set init_cfg to use it).
    backbone=dict(init_cfg=None),
    roi_head=dict(bbox_head=dict(num_classes=20), mask_head=dict(num_classes=20)),
)

max_epochs = 2
train_cfg = dict(max_epochs=max_epochs, val_interval=1)
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=4)]
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1))
log_processor = dict(by_epoch=True)
auto_scale_lr = dict(enable=False, base_batch_size=16)
