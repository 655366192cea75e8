# S²ViTE (structured dynamic sparse training) of the demo ViT on real Fashion-MNIST, from scratch,
# 1 epoch. Per layer 2 of 3 heads (int(3 * 0.7)) and 230 of 384 MLP neurons (int(384 * 0.6))
# are kept; every 100 iterations until 80 % of training heads are swapped by Taylor score /
# gradient norm and neurons by weight / gradient L1. `tools/compact.py` then turns the result
# into a physically smaller CompactVisionTransformer.
_base_ = ['../vit/vit-tiny-p4_fashion-mnist.py']

model = dict(backbone=dict(type='mmsparse.SViTEVisionTransformer'))
custom_hooks = [
    dict(type='StructuredSparseTrainingHook', head_density=0.7, mlp_density=0.6,
         update_interval=100, stop_ratio=0.8, death_rate=0.5, death_rate_min=0.005),
]
