# S²ViTE-Small: structured dynamic sparse training of DeiT-S from scratch on ImageNet-1k with the
# SViTE-Small recipe (8 x 64, 600 epochs). The seeds' first structured setting: heads 0.7
# (int(6 * 0.7) = 4 of 6 heads per layer) and MLP 0.6 (921 of 1536 neurons), swapped every 15000
# iterations until 80 % of training (heads: Taylor score out, gradient L1 in; neurons: weight L1
# out, gradient L1 in). After training, `tools/compact.py CONFIG CKPT --out DIR` writes the
# physically smaller CompactVisionTransformer.
_base_ = ['./svite-deit-small_density0.4_8xb64_in1k.py']

model = dict(backbone=dict(type='mmsparse.SViTEVisionTransformer'))
custom_hooks = [
    dict(type='StructuredSparseTrainingHook', head_density=0.7, mlp_density=0.6,
         update_interval=15000, stop_ratio=0.8, death_rate=0.5, death_rate_min=0.005),
]
