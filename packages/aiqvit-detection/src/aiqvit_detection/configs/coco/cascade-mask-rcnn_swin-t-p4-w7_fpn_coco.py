# Cascade Mask R-CNN, Swin-T: mmdet 3.3 ships no such config, so this one is ours.
# Model = mmdet's cascade-mask-rcnn_r50_fpn_1x_coco with
#  * the Swin-T backbone exactly as in mmdet's mask-rcnn_swin-t-p4-w7_fpn_1x_coco
#    (embed 96, depths 2-2-6-2, heads 3-6-12-24, window 7, drop path 0.2), FPN inputs 96..768;
#  * the three box heads of the Swin Transformer paper's Cascade Mask R-CNN
#    (Shared4Conv1FCBBoxHead, 256 conv channels, BN instead of SyncBN, GIoU loss on decoded boxes).
# Checkpoints must use mmdet 3.x parameter names (a model trained with this config in mmdet 3.x).
_base_ = 'mmdet::cascade_rcnn/cascade-mask-rcnn_r50_fpn_1x_coco.py'

_box_head = dict(
    type='Shared4Conv1FCBBoxHead',
    in_channels=256,
    conv_out_channels=256,
    fc_out_channels=1024,
    roi_feat_size=7,
    num_classes=80,
    reg_class_agnostic=False,
    reg_decoded_bbox=True,
    norm_cfg=dict(type='BN', requires_grad=True),
    loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
    loss_bbox=dict(type='GIoULoss', loss_weight=10.0))
_stds = [[0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067]]

model = dict(
    backbone=dict(
        _delete_=True,
        type='SwinTransformer',
        embed_dims=96,
        depths=[2, 2, 6, 2],
        num_heads=[3, 6, 12, 24],
        window_size=7,
        mlp_ratio=4,
        qkv_bias=True,
        qk_scale=None,
        drop_rate=0.,
        attn_drop_rate=0.,
        drop_path_rate=0.2,
        patch_norm=True,
        out_indices=(0, 1, 2, 3),
        with_cp=False,
        convert_weights=True,
        init_cfg=None),
    neck=dict(in_channels=[96, 192, 384, 768]),
    roi_head=dict(bbox_head=[
        dict(_box_head, bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.], target_stds=s))
        for s in _stds
    ]))

optim_wrapper = dict(
    type='OptimWrapper',
    paramwise_cfg=dict(custom_keys={
        'absolute_pos_embed': dict(decay_mult=0.),
        'relative_position_bias_table': dict(decay_mult=0.),
        'norm': dict(decay_mult=0.)
    }),
    optimizer=dict(_delete_=True, type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05))
del _box_head, _stds
