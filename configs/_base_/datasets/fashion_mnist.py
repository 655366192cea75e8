# Fashion-MNIST (real data: 60k train / 10k test, 28x28 grey, 10 classes) through mmpretrain's
# FashionMNIST dataset. The files come from the Debian package dataset-fashion-mnist, unpacked by
# `make install` into $MMSPARSE_DATA/fashion_mnist (default ./data/fashion_mnist).
data_root = '{{$MMSPARSE_DATA:data}}/fashion_mnist'

# Fashion-MNIST pixel statistics (mean 0.2860, std 0.3530 on a 0-1 scale).
data_preprocessor = dict(num_classes=10, mean=[72.94], std=[90.02], to_rgb=False)

train_pipeline = [dict(type='RandomFlip', prob=0.5, direction='horizontal'),
                  dict(type='PackInputs')]
test_pipeline = [dict(type='PackInputs')]

train_dataloader = dict(
    batch_size=128,
    num_workers=1,
    dataset=dict(type='FashionMNIST', data_root=data_root, split='train', download=False,
                 pipeline=train_pipeline, _scope_='mmpretrain'),
    sampler=dict(type='DefaultSampler', shuffle=True),
    persistent_workers=True,
)
val_dataloader = dict(
    batch_size=256,
    num_workers=1,
    # mmpretrain 1.2's MNIST picks its files by `test_mode`, not by `split`: set both.
    dataset=dict(type='FashionMNIST', data_root=data_root, split='test', test_mode=True,
                 download=False, pipeline=test_pipeline, _scope_='mmpretrain'),
    sampler=dict(type='DefaultSampler', shuffle=False),
    persistent_workers=True,
)
val_evaluator = dict(type='Accuracy', topk=(1, ), _scope_='mmpretrain')
test_dataloader = val_dataloader
test_evaluator = val_evaluator
