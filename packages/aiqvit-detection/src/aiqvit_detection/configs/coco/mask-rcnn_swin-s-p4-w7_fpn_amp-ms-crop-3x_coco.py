# Mask R-CNN, Swin-S: mmdet's own config (its model-zoo checkpoint was trained with it), with no
# ImageNet weight download at build time. Mixed precision (amp) only affects training.
_base_ = 'mmdet::swin/mask-rcnn_swin-s-p4-w7_fpn_amp-ms-crop-3x_coco.py'
model = dict(backbone=dict(init_cfg=None))
