"""Image-quality metrics shared by the image tokenizer's evaluation (`train_vq.py`) and the world model's.

The settings are those of RynnVLA-002's world-model evaluation: pixels in [0, 1] (value range 1.0), SSIM with
an 11-pixel Gaussian window of sigma 1.5, SSIM reported x100. The computations are torchmetrics'; this module
only fixes the settings, converts uint8 frames and returns one value per image, so that callers can average
over images, frames or trajectories as their tables need.
"""

import numpy as np
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

DATA_RANGE = 1.0
SSIM_KERNEL_SIZE = 11
SSIM_SIGMA = 1.5


def frames_to_unit_tensor(frames):
    """uint8 frames (N, H, W, 3) -> float64 (N, 3, H, W) in [0, 1]; raises on anything else."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must have shape (N, H, W, 3), got {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).double() / 255.0


def _pair(predicted, target):
    predicted, target = frames_to_unit_tensor(predicted), frames_to_unit_tensor(target)
    if predicted.shape != target.shape:
        raise ValueError(f"predicted frames {tuple(predicted.shape)} and targets {tuple(target.shape)} differ in shape")
    return predicted, target


SSIM_CHUNK = 64  # image pairs per torchmetrics call


def psnr(predicted, target):
    """PSNR in dB of each image pair, (N,) float64; inf for identical images."""
    predicted, target = _pair(predicted, target)
    values = peak_signal_noise_ratio(predicted, target, data_range=DATA_RANGE, reduction="none", dim=(1, 2, 3))
    return values.numpy()


def ssim(predicted, target):
    """SSIM x100 of each image pair, (N,) float64 (100 for identical images)."""
    predicted, target = _pair(predicted, target)
    # In chunks: torchmetrics' intermediate buffers grow far faster than the input (49 GB for 4096 64-px frames).
    values = [
        structural_similarity_index_measure(
            predicted[start : start + SSIM_CHUNK], target[start : start + SSIM_CHUNK], data_range=DATA_RANGE,
            kernel_size=SSIM_KERNEL_SIZE, sigma=SSIM_SIGMA, reduction="none",
        ).reshape(-1)
        for start in range(0, len(predicted), SSIM_CHUNK)
    ]
    return 100.0 * torch.cat(values).numpy()


# ---------------------------------------------------------------------------------------------------------------------
# World-model evaluation (eval_world_model.py): RynnVLA-002's PSNR with epsilon, LPIPS-VGG, I3D features, FVD
# ---------------------------------------------------------------------------------------------------------------------

# piqa's PSNR, which RynnVLA-002 uses: 10 log10(range^2 / (MSE + 1e-8)), so identical images give 80 dB, not inf.
PSNR_EPSILON = 1e-8
# RynnVLA-002 adds this to the diagonal of both covariance matrices before the matrix square root.
FVD_COVARIANCE_EPSILON = 1e-6
# The StyleGAN-V I3D TorchScript detector's arguments as RynnVLA-002 calls it: float input (B, 3, T, H, W) in
# [0, 255], rescaled to [-1, 1] and resized to 224 x 224 inside the detector; features before the classifier.
I3D_DETECTOR_KWARGS = {"rescale": True, "resize": True, "return_features": True}
# torchvision's vgg16 `features` (configuration "D"): channels of each 3x3 convolution, "M" for a 2x2 max pool.
VGG16_FEATURE_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
LPIPS_BATCH_SIZE = 16


def psnr_with_epsilon(predicted, target, epsilon=PSNR_EPSILON):
    """PSNR in dB of each image pair as piqa computes it (RynnVLA-002's world-model evaluation), (N,) float64.

    10 log10(1 / (MSE + epsilon)) with pixels in [0, 1]: finite for identical images (80 dB at epsilon 1e-8), so
    averages over frames stay finite; within 1e-4 dB of `psnr` for any pair whose MSE exceeds 1e-4 (43 dB).
    """
    predicted, target = _pair(predicted, target)
    mse = (predicted - target).square().flatten(1).mean(1)
    return (10.0 * torch.log10(DATA_RANGE**2 / (mse + epsilon))).numpy()


def frames_to_signed_tensor(frames):
    """uint8 frames (N, H, W, 3) -> float32 (N, 3, H, W) in [-1, 1] (x / 255 * 2 - 1), LPIPS's input range."""
    return (frames_to_unit_tensor(frames) * 2.0 - 1.0).float()


def vgg16_features():
    """torchvision's `vgg16().features` as plain torch modules, with the same indices (0 .. 30), so that a state dict
    saved from torchvision (`features.N.weight` / `features.N.bias`) loads into it unchanged."""
    from torch import nn

    layers, channels = [], 3
    for item in VGG16_FEATURE_LAYERS:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, item, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = item
    return nn.Sequential(*layers)


def _load_state_dict_file(path):
    path = str(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict (name -> tensor), got {type(state).__name__}")
    return state


def load_vgg16_features(path):
    """`vgg16_features()` with the weights of a torchvision VGG16 state dict file (`.pth` or `.safetensors`).

    Accepted key layouts: torchvision's whole model (`features.N.weight`, `classifier.*` ignored), or the feature
    stack alone (`N.weight`). Every convolution's weight and bias must be present with torchvision's shapes; a
    missing or misshapen tensor is an error that names it.
    """
    state = _load_state_dict_file(path)
    features = vgg16_features()
    expected = features.state_dict()
    prefix = "features." if any(key.startswith("features.") for key in state) else ""
    wanted = {name: state.get(prefix + name) for name in expected}
    missing = [prefix + name for name, tensor in wanted.items() if tensor is None]
    if missing:
        raise ValueError(
            f"{path}: not a torchvision VGG16 state dict: missing {missing[:4]}{' ...' if len(missing) > 4 else ''} "
            f"(found keys like {sorted(state)[:3]})"
        )
    wrong = [
        f"{prefix + name} {tuple(tensor.shape)} (expected {tuple(expected[name].shape)})"
        for name, tensor in wanted.items()
        if tuple(tensor.shape) != tuple(expected[name].shape)
    ]
    if wrong:
        raise ValueError(f"{path}: VGG16 tensors of the wrong shape: {wrong[:3]}")
    features.load_state_dict({name: tensor.float() for name, tensor in wanted.items()})
    return features.eval()


def lpips_head_weights_path():
    """The LPIPS v0.1 linear heads for VGG that torchmetrics ships (byte-identical to the `lpips` package's)."""
    from pathlib import Path

    from torchmetrics.functional.image import lpips as torchmetrics_lpips

    return Path(torchmetrics_lpips.__file__).parent / "lpips_models" / "vgg.pth"


def load_lpips(vgg16_weights, heads_path=None):
    """LPIPS-VGG (v0.1) as a torch module: `module(x, y)` on float (N, 3, H, W) in [-1, 1] -> (N, 1, 1, 1), not
    scaled; differentiable in its inputs (usable as a perceptual loss), its own weights frozen.

    It is torchmetrics' LPIPS module with the VGG16 backbone built here (`load_vgg16_features`, from a torchvision
    VGG16 state dict file) in place of torchvision's, and the linear heads torchmetrics ships (or `heads_path`).
    """
    from unittest import mock

    from torchmetrics.functional.image import lpips as torchmetrics_lpips

    features = load_vgg16_features(vgg16_weights)
    if not hasattr(torchmetrics_lpips, "_get_tv_model_features") or not hasattr(torchmetrics_lpips, "_NoTrainLpips"):
        raise RuntimeError(
            "this torchmetrics version does not expose the LPIPS pieces used here (_get_tv_model_features, "
            "_NoTrainLpips); install the pinned torchmetrics (requirements.txt)"
        )
    # torchmetrics asks `_get_tv_model_features("vgg16", pretrained)` for torchvision's stack: hand it ours.
    with mock.patch.object(torchmetrics_lpips, "_get_tv_model_features", lambda net, pretrained=False: features):
        network = torchmetrics_lpips._NoTrainLpips(net="vgg", pretrained=False)
    heads = _load_state_dict_file(heads_path or lpips_head_weights_path())
    # `lins.N` is a ModuleList over the same `linN` modules: the file names each head once, as `linN.*`.
    head_names = {name for name in network.state_dict() if name.startswith("lin") and not name.startswith("lins.")}
    if set(heads) != head_names:
        raise ValueError(f"LPIPS heads file has keys {sorted(heads)}, expected {sorted(head_names)}")
    network.load_state_dict(heads, strict=False)
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    return network.eval()


class LPIPSVGG:
    """LPIPS with the VGG16 backbone (`lpips.LPIPS(net="vgg")`, version 0.1), inputs in [-1, 1], reported x100.

    The computation is torchmetrics' LPIPS module (scaling layer, the five VGG16 stages relu1_2 .. relu5_3,
    channel-normalised squared differences, the linear heads it ships, spatial mean, sum over stages). Only the
    backbone is supplied here: torchmetrics would take it from torchvision (which this project cannot install), so
    the VGG16 feature stack is built from plain torch modules and loaded from `vgg16_weights`, a torchvision VGG16
    state dict the user provides (`vgg16-397923af.pth`, torchvision's IMAGENET1K_V1 weights, which `lpips` uses).
    """

    def __init__(self, vgg16_weights, device="cpu", heads_path=None):
        self.network = load_lpips(vgg16_weights, heads_path).to(device).eval()
        self.device = device

    @torch.no_grad()
    def __call__(self, predicted, target):
        """LPIPS x100 of each uint8 image pair (N, H, W, 3), (N,) float64 (0 for identical images)."""
        _pair(predicted, target)  # validates shapes and dtypes
        predicted, target = frames_to_signed_tensor(predicted), frames_to_signed_tensor(target)
        values = []
        for start in range(0, predicted.shape[0], LPIPS_BATCH_SIZE):
            chunk = slice(start, start + LPIPS_BATCH_SIZE)
            first, second = predicted[chunk].to(self.device), target[chunk].to(self.device)
            values.append(self.network(second, first, normalize=False).flatten().double().cpu())
        return 100.0 * torch.cat(values).numpy()


class I3DFeatures:
    """Video features of the I3D TorchScript detector used for FVD (StyleGAN-V's `i3d_torchscript.pt`, the one
    RynnVLA-002 loads), called as RynnVLA-002 calls it: float (B, 3, T, H, W) in [0, 255], `rescale=True,
    resize=True, return_features=True` (400-dimensional features before the classifier)."""

    def __init__(self, path, device="cpu"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load is deprecated, still the format
            self.model = torch.jit.load(str(path), map_location=device).eval()
        self.device = device

    @torch.no_grad()
    def __call__(self, videos):
        """uint8 videos (B, T, H, W, 3) -> features (B, D) float64."""
        videos = np.asarray(videos)
        if videos.ndim != 5 or videos.shape[-1] != 3 or videos.dtype != np.uint8:
            raise ValueError(f"videos must be uint8 (B, T, H, W, 3), got {videos.dtype} {videos.shape}")
        clips = torch.from_numpy(np.ascontiguousarray(videos)).to(self.device).permute(0, 4, 1, 2, 3).float()
        features = self.model(clips, **I3D_DETECTOR_KWARGS)
        if features.ndim != 2 or features.shape[0] != videos.shape[0]:
            raise ValueError(f"the I3D detector returned features of shape {tuple(features.shape)}, expected (B, D)")
        return features.double().cpu().numpy()


def feature_statistics(features):
    """Mean (D,) and covariance (D, D) of features (N, D) in float64; the covariance divides by N, as RynnVLA-002's
    (and StyleGAN-V's) FeatureStats do: E[x x^T] - mu mu^T."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] == 0:
        raise ValueError(f"features must have shape (N >= 1, D), got {features.shape}")
    mean = features.mean(0)
    covariance = features.T @ features / features.shape[0] - np.outer(mean, mean)
    return mean, covariance


def frechet_distance(mean_1, covariance_1, mean_2, covariance_2):
    """Frechet distance of two Gaussians, ||mu_1 - mu_2||^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)), in float64 with
    scipy's matrix square root; its (numerically) imaginary part is dropped, as in RynnVLA-002 and StyleGAN-V."""
    import scipy.linalg

    mean_1, mean_2 = np.asarray(mean_1, dtype=np.float64), np.asarray(mean_2, dtype=np.float64)
    covariance_1, covariance_2 = np.asarray(covariance_1, dtype=np.float64), np.asarray(covariance_2, dtype=np.float64)
    root = np.real(scipy.linalg.sqrtm(covariance_1 @ covariance_2))
    return float(np.real(np.square(mean_1 - mean_2).sum() + np.trace(covariance_1 + covariance_2 - 2.0 * root)))


def fvd(real_features, generated_features, covariance_epsilon=FVD_COVARIANCE_EPSILON):
    """FVD between two sets of clip features (N, D) and (M, D): the Frechet distance of their Gaussians, with
    `covariance_epsilon` added to both covariance diagonals (RynnVLA-002's 1e-6). Few clips (N < D) give
    rank-deficient covariances: compare such values only between runs on the same clips."""
    mean_1, covariance_1 = feature_statistics(real_features)
    mean_2, covariance_2 = feature_statistics(generated_features)
    identity = np.eye(covariance_1.shape[0]) * covariance_epsilon
    return frechet_distance(mean_1, covariance_1 + identity, mean_2, covariance_2 + identity)
