# SViTE (unstructured dynamic sparse training) of the demo ViT on real Fashion-MNIST, from scratch,
# with the dense demo's recipe (1 epoch = 938 iterations of 64 images, ~3 min on 2 CPU cores).
# 50 % of the patch-embed, qkv, proj, fc1, fc2 and head weights are kept (ERK per layer); every
# 100 iterations until 80 % of training the smallest weights of each layer are pruned (death
# rate 0.5 on a cosine to 0.005) and as many are regrown where the gradient is largest (RigL).
_base_ = ['../vit/vit-tiny-p4_fashion-mnist.py']

custom_hooks = [
    dict(type='SparseTrainingHook', density=0.5, sparse_init='fixed_ERK', growth='gradient',
         update_interval=100, stop_ratio=0.8, death_rate=0.5, death_rate_min=0.005),
]
