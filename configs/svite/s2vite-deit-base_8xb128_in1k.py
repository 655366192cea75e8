# S²ViTE-Base: structured dynamic sparse training of DeiT-B (heads 0.7 -> 8 of 12, MLP 0.6 ->
# 1843 of 3072 neurons) with the SViTE-Base recipe (8 x 128, 600 epochs, updates every 7000
# iterations until 80 %).
_base_ = ['./svite-deit-base_density0.4_8xb128_in1k.py']

model = dict(backbone=dict(type='mmsparse.SViTEVisionTransformer'))
custom_hooks = [
    dict(type='StructuredSparseTrainingHook', head_density=0.7, mlp_density=0.6,
         update_interval=7000, stop_ratio=0.8, death_rate=0.5, death_rate_min=0.005),
]
