# Mask R-CNN with a reduced Swin-T-architecture backbone for the synthetic shapes data set
# (the embedded default, trained from scratch on CPU by benchmarks/detection/train.py).
# Differences from mmdet's mask-rcnn_swin-t-p4-w7_fpn_1x_coco, all for CPU cost:
#   backbone: embed_dims 48 (Swin-T: 96), depths 2-2-2-2 (2-2-6-2), heads 3-6-12-24 (same),
#             window 4 (7) so that the 32/16/8/4 token grids of a 128x128 image tile exactly,
#             no drop path; patch size 4, mlp ratio 4, qkv bias, patch norm and shifted windows unchanged;
#   neck/heads: 64 FPN channels (256), anchor scale 4 (8) for 14-56 px objects, 256-unit box FCs (1024),
#             2 mask-head convs of 64 channels (4 of 256), 64 sampled RoIs per image (512), 5 classes;
#   data: images resized to fit 128x128 (the synthetic ones are 128x128), horizontal flip for training.
_base_ = 'mmdet::_base_/models/mask-rcnn_r50_fpn.py'

classes = ('disk', 'square', 'triangle', 'star', 'cross')
image_size = 128
fpn_channels = 64

model = dict(
    data_preprocessor=dict(pad_size_divisor=32),
    backbone=dict(
        _delete_=True,
        type='SwinTransformer',
        pretrain_img_size=image_size,
        embed_dims=48,
        depths=[2, 2, 2, 2],
        num_heads=[3, 6, 12, 24],
        window_size=4,
        mlp_ratio=4,
        qkv_bias=True,
        qk_scale=None,
        drop_rate=0.,
        attn_drop_rate=0.,
        drop_path_rate=0.,
        patch_norm=True,
        out_indices=(0, 1, 2, 3),
        with_cp=False,
        convert_weights=False,
        init_cfg=None),
    neck=dict(in_channels=[48, 96, 192, 384], out_channels=fpn_channels),
    rpn_head=dict(in_channels=fpn_channels, feat_channels=fpn_channels,
                  anchor_generator=dict(scales=[4])),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=fpn_channels),
        bbox_head=dict(in_channels=fpn_channels, fc_out_channels=256, num_classes=len(classes)),
        mask_roi_extractor=dict(out_channels=fpn_channels),
        mask_head=dict(num_convs=2, in_channels=fpn_channels, conv_out_channels=fpn_channels,
                       num_classes=len(classes))),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=1000, max_per_img=500),
        rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(
        rpn=dict(nms_pre=500, max_per_img=300),
        rcnn=dict(max_per_img=50)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(image_size, image_size), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(image_size, image_size), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        type='CocoDataset',
        metainfo=dict(classes=classes),
        data_root='',
        ann_file='annotations/instances_train2017.json',
        data_prefix=dict(img='train2017/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=4),
        pipeline=train_pipeline))
test_dataloader = dict(
    batch_size=1,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type='CocoDataset',
        metainfo=dict(classes=classes),
        data_root='',
        ann_file='annotations/instances_val2017.json',
        data_prefix=dict(img='val2017/'),
        test_mode=True,
        pipeline=test_pipeline))
val_dataloader = test_dataloader
test_evaluator = dict(type='CocoMetric', metric=['bbox', 'segm'], ann_file='', format_only=False)
val_evaluator = test_evaluator

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=4e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={
        'relative_position_bias_table': dict(decay_mult=0.),
        'norm': dict(decay_mult=0.)
    }),
    clip_grad=dict(max_norm=10.0))
