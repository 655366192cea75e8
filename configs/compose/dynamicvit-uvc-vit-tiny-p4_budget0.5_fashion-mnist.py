# Stacked sparsity on real Fashion-MNIST (CPU): DynamicViT token pruning (rho = 0.7, before
# layers 2 and 4) on the UVC compact model at FLOPs budget 0.5. The backbone takes the compact
# model's structure (per-layer heads, value dims, MLP widths; skipped blocks removed) and its
# weights from `model.compact_checkpoint`; only the two predictors start fresh and are trained
# with the DynamicViT losses, distilling from the compact model as loaded (teacher=None).
#   python tools/train.py configs/uvc/uvc-vit-tiny-p4_stage2_fashion-mnist.py   # writes it
#   python tools/train.py configs/compose/dynamicvit-uvc-vit-tiny-p4_budget0.5_fashion-mnist.py
# A dense teacher instead: model.teacher='configs/vit/vit-tiny-p4_fashion-mnist.py' with
# model.teacher_checkpoint=<the dense model's checkpoint> (see configs/compose/README.md for the
# measured difference).
_base_ = ['../dynamicvit/dynamicvit-vit-tiny-p4_fashion-mnist.py']

model = dict(
    compact_checkpoint='work_dirs/uvc-vit-tiny-p4_stage2_fashion-mnist/uvc_compact.pth')
