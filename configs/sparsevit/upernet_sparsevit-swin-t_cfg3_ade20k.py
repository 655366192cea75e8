# UperNet Swin-T on ADE20K fine-tuned with fixed window ratios (the detection search's cfg3),
# starting from the SAA model.
#   tools/dist_train.sh configs/sparsevit/upernet_sparsevit-swin-t_cfg3_ade20k.py 8
_base_ = ['./upernet_sparsevit-swin-t_ade20k.py']

window_ratios = [[0.7, 0.7], [0, 0], [0.2, 0.2, 0.4, 0.4, 0.5, 0.5], [0, 0]]
model = dict(backbone=dict(window_ratios=window_ratios))
load_from = './work_dirs/upernet_sparsevit-swin-t_saa_ade20k/iter_40000.pth'
