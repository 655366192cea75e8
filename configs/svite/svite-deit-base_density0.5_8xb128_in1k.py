# SViTE-Base at density 0.5; otherwise as svite-deit-base_density0.4_8xb128_in1k.py.
_base_ = ['./svite-deit-base_density0.4_8xb128_in1k.py']

custom_hooks = [
    dict(type='SparseTrainingHook', density=0.5, sparse_init='fixed_ERK', growth='gradient',
         update_interval=7000, stop_ratio=0.8, death_rate=0.5, death_rate_min=0.005),
]
