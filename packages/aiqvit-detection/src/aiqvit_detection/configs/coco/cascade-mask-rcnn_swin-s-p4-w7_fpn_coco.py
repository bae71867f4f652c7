# Cascade Mask R-CNN, Swin-S: our Swin-T cascade config with Swin-S depths (2-2-18-2) and drop
# path 0.3, as in the Swin Transformer paper.
_base_ = './cascade-mask-rcnn_swin-t-p4-w7_fpn_coco.py'
model = dict(backbone=dict(depths=[2, 2, 18, 2], drop_path_rate=0.3))
