"""Draw the tokens a DynamicViT backbone keeps at each pruning stage over an image (MMEngine
Visualizer), as in the paper's figures: dropped patches blanked, one panel per stage.

    python tools/visualization/visualize_tokens.py CONFIG CHECKPOINT IMAGE [--out tokens.png]
        [--scale S]

Panels, side by side: the image as the network sees it (resized to the backbone's ``img_size``),
then after each pruning location the patches still kept (the model in eval mode: the
``int(num_patches * ratio)`` best-scored patches). The image is read in grey when the model
takes one channel.
"""
import argparse
import os

from mmsparse.utils import build_model, load_config, run_cli
from mmsparse.utils.cli import DictAction, UserError, check_checkpoint, input_size


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='config file path')
    parser.add_argument('checkpoint', help='checkpoint of the DynamicViT model')
    parser.add_argument('image', help='image file')
    parser.add_argument('--out', default='tokens.png', help='PNG to write')
    parser.add_argument('--scale', type=int, default=None,
                        help='upscale each panel by this factor (default: to >= 224 pixels)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value pairs')
    return parser.parse_args(argv)


def token_panels(image, patch_hw, grid_hw, kept, counts, scale: int = 1):
    """The input panel and one panel per stage with the dropped patches blanked (white).

    Args:
        image: (H, W, 3) uint8 RGB image as fed to the network.
        patch_hw: (ph, pw) patch size in pixels.
        grid_hw: (rows, cols) of the patch grid.
        kept: per stage, the kept patch positions (row-major indices) of this image.
        counts: per stage, the number of kept patches (for the captions).
        scale: integer upscaling of the panels.

    Returns:
        (H * scale, (1 + stages) * W * scale, 3) uint8 RGB picture.
    """
    import mmcv
    import numpy as np
    from mmengine.visualization import Visualizer

    big = mmcv.imresize(image, (image.shape[1] * scale, image.shape[0] * scale),
                        interpolation='nearest')
    rows, cols = grid_hw
    ph, pw = patch_hw[0] * scale, patch_hw[1] * scale
    font = max(8, big.shape[1] // 16)
    panels = []
    vis = Visualizer(image=big.copy())
    vis.draw_texts(f'input: {rows * cols} patches', np.array([2, 2]), colors='black',
                   font_sizes=font, bboxes=dict(facecolor='white', alpha=0.8, pad=1))
    panels.append(vis.get_image())
    for stage, (positions, count) in enumerate(zip(kept, counts)):
        keep = set(int(i) for i in positions)
        dropped = [[(i % cols) * pw, (i // cols) * ph, (i % cols + 1) * pw, (i // cols + 1) * ph]
                   for i in range(rows * cols) if i not in keep]
        vis = Visualizer(image=big.copy())
        if dropped:
            vis.draw_bboxes(np.array(dropped, dtype=np.float32), edge_colors='white',
                            face_colors='white', alpha=1.0, line_widths=1)
        vis.draw_texts(f'stage {stage + 1}: {count}/{rows * cols}', np.array([2, 2]),
                       colors='black', font_sizes=font,
                       bboxes=dict(facecolor='white', alpha=0.8, pad=1))
        panels.append(vis.get_image())
    return np.concatenate(panels, axis=1)


def main() -> int:
    args = parse_args()
    check_checkpoint(args.checkpoint)
    if not os.path.isfile(args.image):
        raise UserError(f'image not found: {args.image}')
    if args.scale is not None and args.scale < 1:
        raise UserError(f'--scale must be >= 1, got {args.scale}')
    import mmcv
    import numpy as np
    import torch

    cfg = load_config(args.config, args.cfg_options)
    model = build_model(cfg, args.checkpoint)
    backbone = model.backbone
    if not hasattr(backbone, 'forward_with_aux') or not hasattr(backbone, 'pruning_loc'):
        raise UserError(f'model.backbone.type: {type(backbone).__name__} prunes no tokens; use '
                        f'a config with mmsparse.DynamicVisionTransformer (configs/dynamicvit/)')
    h, w = input_size(cfg, None, '--img-size')
    grey = cfg.model.backbone.get('in_channels', 3) == 1
    image = mmcv.imread(args.image, flag='grayscale' if grey else 'color')
    image = mmcv.imresize(image, (w, h))
    if grey:
        tensor = torch.from_numpy(image.copy())[None]
        rgb = np.repeat(image[..., None], 3, axis=2)
    else:
        tensor = torch.from_numpy(image.copy()).permute(2, 0, 1)  # BGR, as a pipeline gives it
        rgb = image[..., ::-1].copy()
    inputs = model.data_preprocessor(dict(inputs=[tensor], data_samples=None), False)['inputs']
    with torch.no_grad():
        (feats, *_), aux = backbone.forward_with_aux(inputs)
        scores = model.head((feats, )).softmax(-1)[0]
    kept = [k[0].tolist() for k in aux['kept_indices']]
    patch = backbone.patch_embed.projection.stride
    grid = (h // patch[0], w // patch[1])
    scale = args.scale or max(1, -(-224 // max(h, w)))
    picture = token_panels(rgb, patch, grid, kept, [len(k) for k in kept], scale)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)) or '.', exist_ok=True)
    mmcv.imwrite(picture[..., ::-1], args.out)
    from mmsparse.checkpoint import load_checkpoint_file
    meta = load_checkpoint_file(args.checkpoint, map_location='cpu').get('meta') or {}
    classes = (meta.get('dataset_meta') or {}).get('classes')
    label = int(scores.argmax())
    name = classes[label] if classes and label < len(classes) else label
    print(f'pruning_loc {backbone.pruning_loc}: kept '
          f'{[len(k) for k in kept]} of {grid[0] * grid[1]} patches; prediction {name} '
          f'({float(scores[label]):.2f})')
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    run_cli(main)
