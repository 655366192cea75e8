# Stacked sparsity on ImageNet-1k: DynamicViT-DeiT-S's recipe (rho = 0.7, predictors before
# layers 3, 6, 9; 30 epochs, backbone frozen for the first 5, then at 0.01 x lr; EMA) on the UVC
# DeiT-S compact model at FLOPs budget 0.5 instead of the dense DeiT-S. The backbone takes the
# compact model's structure and its weights from `model.compact_checkpoint` (written by
# UVCCompactHook at the end of UVC stage 2); only the predictors are new. The teacher is the
# compact model as loaded (teacher=None). pruning_loc counts the compact model's layers: if UVC
# removed blocks, move the predictors (the build says so if a location does not exist).
#   tools/dist_train.sh configs/uvc/uvc-deit-small_stage1_budget0.5_in1k.py 8
#   tools/dist_train.sh configs/uvc/uvc-deit-small_stage2_budget0.5_in1k.py 8
#   tools/dist_train.sh configs/compose/dynamicvit-uvc-deit-small_budget0.5_8xb128_in1k.py 8
_base_ = ['../dynamicvit/dynamicvit-deit-small_8xb128_in1k.py']

model = dict(
    compact_checkpoint='work_dirs/uvc-deit-small_stage2_budget0.5_in1k/uvc_compact.pth')
load_from = None  # every weight but the predictors' comes from compact_checkpoint
