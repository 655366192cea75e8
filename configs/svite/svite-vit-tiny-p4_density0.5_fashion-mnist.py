# SViTE (unstructured dynamic sparse training) of the demo ViT on real Fashion-MNIST, from scratch,
# with the dense demo's recipe (1 epoch = 938 iterations of 64 images, ~3 min on 2 CPU cores).
# 50 % of the patch-embed, qkv, proj, fc1, fc2 and head weights are kept (ERK per layer); every
# 100 iterations until 80 % of training the smallest weights of each layer are pruned and as many
# are regrown where the gradient is largest (RigL). Death rate 0.1 on a cosine to 0.005: this
# schedule has 7 updates (ImageNet: ~100 over 600 epochs), and re-drawing half of every layer at
# each of them (0.5, the ImageNet value) cost 2.3 points here (75.5 vs 77.8 % top-1).
_base_ = ['../vit/vit-tiny-p4_fashion-mnist.py']

custom_hooks = [
    dict(type='SparseTrainingHook', density=0.5, sparse_init='fixed_ERK', growth='gradient',
         update_interval=100, stop_ratio=0.8, death_rate=0.1, death_rate_min=0.005),
]
