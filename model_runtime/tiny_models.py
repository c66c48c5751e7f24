"""Small-dimension versions of the two Wan2.2-S2V components whose sizes DiffSynth hard-codes.

The DiT and the text encoder take their sizes as arguments; the VAE (dim 96) and the wav2vec2 audio
encoder (xlsr-53 large) do not, so a tiny checkpoint needs these subclasses. Everything else about
them (forward passes, encode/decode, feature bucketing) is DiffSynth's own code.
"""
from __future__ import annotations

import torch
from diffsynth.models.wan_video_vae import VideoVAE_, WanVideoVAE
from diffsynth.models.wav2vec import WanS2VAudioEncoder
from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

# WanVideoVAE's latent normalisation (copied from its __init__, which cannot be run cheaply).
_LATENT_MEAN = torch.tensor([
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
])
_LATENT_STD = torch.tensor([
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
])


class TinyWanVideoVAE(WanVideoVAE):
    def __init__(self, z_dim: int = 16, dim: int = 8, num_res_blocks: int = 1):
        # Skips the parent's __init__, which would first build the dim-96 model (127M parameters), and
        # sets the same attributes. The latent layout (z_dim 16, 8x spatial and 4x temporal
        # compression, the real latent statistics) stays the real one.
        torch.nn.Module.__init__(self)
        self.mean, self.std = _LATENT_MEAN.clone(), _LATENT_STD.clone()
        self.scale = [self.mean, 1.0 / self.std]
        self.model = VideoVAE_(dim=dim, z_dim=z_dim, num_res_blocks=num_res_blocks).eval().requires_grad_(False)
        self.upsampling_factor = 8
        self.z_dim = z_dim


class TinyWanS2VAudioEncoder(WanS2VAudioEncoder):
    def __init__(self, **wav2vec2_config):
        # Skips the parent's __init__, which would build the 300M-parameter xlsr-53 model first.
        torch.nn.Module.__init__(self)
        self.model = Wav2Vec2ForCTC(Wav2Vec2Config(**wav2vec2_config))
        self.video_rate = 30
