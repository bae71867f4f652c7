# Mask R-CNN, Swin-T: mmdet's own config, unchanged except that the backbone does not fetch
# ImageNet weights at build time (the detector checkpoint you pass holds every weight).
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'
model = dict(backbone=dict(init_cfg=None))
