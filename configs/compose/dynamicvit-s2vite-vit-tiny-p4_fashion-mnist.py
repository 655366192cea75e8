# Stacked sparsity on real Fashion-MNIST (CPU): DynamicViT token pruning (rho = 0.7, before
# layers 2 and 4) on the S²ViTE compact model (2 of 3 heads and 230 of 384 MLP neurons per
# layer). The backbone takes the compact structure and weights from `model.compact_checkpoint`;
# only the predictors are new, trained with the DynamicViT losses and the compact model as the
# teacher.
#   python tools/train.py configs/svite/s2vite-vit-tiny-p4_fashion-mnist.py
#   python tools/compact.py configs/svite/s2vite-vit-tiny-p4_fashion-mnist.py \
#       work_dirs/s2vite-vit-tiny-p4_fashion-mnist/epoch_1.pth \
#       --out work_dirs/s2vite-vit-tiny-p4_fashion-mnist/compact --method svite
#   python tools/train.py configs/compose/dynamicvit-s2vite-vit-tiny-p4_fashion-mnist.py
_base_ = ['../dynamicvit/dynamicvit-vit-tiny-p4_fashion-mnist.py']

model = dict(
    compact_checkpoint='work_dirs/s2vite-vit-tiny-p4_fashion-mnist/compact/'
                       's2vite-vit-tiny-p4_fashion-mnist_compact.pth')
