"""Write a tiny random-weight Wan2.2-S2V checkpoint in the real checkpoint's file layout.

No machine here can download the 49 GB of real weights. This writes the same files (DiT shards and
index, umt5 .pth, VAE .pth, tokenizer folder, wav2vec2 folder) with tiny shapes, deterministic from a
seed, so the real loader and DiffSynth's real S2V pipeline run on CPU in seconds. Its videos are noise.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from model_runtime import layout
from s2v.storage.atomic import atomic_folder

# Sizes chosen so one 6 s speech makes a clip in well under a minute on 2 CPU cores. The constraints
# that DiffSynth's S2V path puts on them: VAE z_dim 16, exactly 24 wav2vec2 layers (the DiT weights 25
# hidden states), DiT audio_dim == wav2vec2 hidden size, DiT text_dim == text encoder dim.
TEXT_ENCODER = dict(vocab=384, dim=32, dim_attn=32, dim_ffn=64, num_heads=2, num_layers=2, num_buckets=32)
VAE = dict(z_dim=16, dim=8, num_res_blocks=1)
AUDIO_ENCODER = dict(
    hidden_size=32, num_hidden_layers=24, num_attention_heads=2, intermediate_size=64,
    conv_dim=[32] * 7, conv_kernel=[10, 3, 3, 3, 3, 2, 2], conv_stride=[5, 2, 2, 2, 2, 2, 2],
    num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, do_stable_layer_norm=True,
    feat_extract_norm="layer", vocab_size=33,
)
DIT = dict(
    dim=64, in_dim=16, ffn_dim=128, out_dim=16, text_dim=TEXT_ENCODER["dim"], freq_dim=256, eps=1e-6,
    patch_size=[1, 2, 2], num_heads=2, num_layers=2, cond_dim=16, audio_dim=AUDIO_ENCODER["hidden_size"],
    num_audio_token=4, audio_inject_layers=[0, 1],
)
FRAMES_PER_SEGMENT = 16
# The original server's preset names, scaled down: a manifest that asks for 480p runs unchanged on this checkpoint.
PRESETS = {
    "480p": {"max_area": 80 * 80, "shift": 3.0},
    "720p": {"max_area": 96 * 96, "shift": 5.0},
}
# The official sizes (e.g. 1280*720) are maximum areas; on this checkpoint they are divided by this.
SIZE_AREA_DIVISOR = 64

_TOKENIZER_CORPUS = """A person speaking naturally. A woman talks to the camera in a bright studio.
A man explains the news calmly, looking straight ahead. Blurry, low quality, static, subtitles.
The quick brown fox jumps over the lazy dog. Hello, welcome to our channel, today we talk about video.
"""


def make_tiny_checkpoint(root: Path | str, seed: int = 0, overwrite: bool = False) -> Path:
    """Write the checkpoint to `root` (atomically: a half-written folder is never left behind)."""
    root = Path(root).expanduser()
    if root.exists():
        if not overwrite:
            layout.check_checkpoint(root)
            return root
        shutil.rmtree(root)
    try:
        with atomic_folder(root) as staging:
            _write(staging, seed)
            staging.chmod(0o755)
    except OSError:
        # Another process finished writing the same checkpoint first: keep theirs.
        if not root.is_dir():
            raise
    return root


def _write(root: Path, seed: int) -> None:
    from diffsynth.models.wan_video_dit_s2v import WanS2VModel
    from diffsynth.models.wan_video_text_encoder import WanTextEncoder

    from model_runtime.tiny_models import TinyWanS2VAudioEncoder, TinyWanVideoVAE

    torch.manual_seed(seed)
    dit = WanS2VModel(**{**DIT, "patch_size": tuple(DIT["patch_size"])})
    _write_dit(root, dit.state_dict())

    torch.manual_seed(seed + 1)
    text_encoder = WanTextEncoder(**TEXT_ENCODER)
    # The real file is bf16 (its name says so); the loader casts to the run's dtype.
    torch.save({k: v.to(torch.bfloat16) for k, v in text_encoder.state_dict().items()}, root / layout.TEXT_ENCODER)

    torch.manual_seed(seed + 2)
    vae = TinyWanVideoVAE(**VAE)
    torch.save(vae.model.state_dict(), root / layout.VAE)

    torch.manual_seed(seed + 3)
    audio_encoder = TinyWanS2VAudioEncoder(**AUDIO_ENCODER)
    _write_wav2vec2(root / layout.AUDIO_DIR, audio_encoder.model)

    _write_tokenizer(root / layout.TOKENIZER_DIR, TEXT_ENCODER["vocab"])

    config = {
        "_class_name": "WanModel_S2V",
        **{k: v for k, v in DIT.items()},
        layout.TINY_KEY: {
            "seed": seed,
            "dit": DIT,
            "text_encoder": TEXT_ENCODER,
            "vae": VAE,
            "audio_encoder": AUDIO_ENCODER,
            "frames_per_clip": FRAMES_PER_SEGMENT,
            "presets": PRESETS,
            "size_area_divisor": SIZE_AREA_DIVISOR,
        },
    }
    (root / layout.CONFIG).write_text(json.dumps(config, indent=2))


def _write_dit(root: Path, state_dict: dict[str, torch.Tensor]) -> None:
    keys = list(state_dict)
    per_shard = -(-len(keys) // layout.DIT_SHARD_COUNT)
    weight_map, total = {}, 0
    for i, shard in enumerate(layout.DIT_SHARDS):
        part = {k: state_dict[k].contiguous() for k in keys[i * per_shard:(i + 1) * per_shard]}
        save_file(part, str(root / shard), metadata={"format": "pt"})
        for k, v in part.items():
            weight_map[k] = shard
            total += v.numel() * v.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (root / layout.DIT_INDEX).write_text(json.dumps(index, indent=2))


def _write_wav2vec2(folder: Path, model) -> None:
    from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor

    folder.mkdir(parents=True)
    model.config.save_pretrained(folder)
    # The published file predates torch's weight-norm parametrizations: it names the positional
    # convolution's weights weight_g / weight_v, which DiffSynth's converter renames on load.
    renames = {
        "wav2vec2.encoder.pos_conv_embed.conv.parametrizations.weight.original0":
            "wav2vec2.encoder.pos_conv_embed.conv.weight_g",
        "wav2vec2.encoder.pos_conv_embed.conv.parametrizations.weight.original1":
            "wav2vec2.encoder.pos_conv_embed.conv.weight_v",
    }
    state = {renames.get(k, k): v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})

    letters = ["<pad>", "<s>", "</s>", "<unk>", "|", *"ETAONISRHDLUMWCFGYPBVK'XJQZ"][:33]
    vocab_file = folder / "vocab.json"
    vocab_file.write_text(json.dumps({c: i for i, c in enumerate(letters)}))
    feature_extractor = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True, return_attention_mask=True
    )
    # Saved apart, as in the published folder (preprocessor_config.json + tokenizer files), which
    # Wav2Vec2Processor.from_pretrained reads back.
    feature_extractor.save_pretrained(folder)
    Wav2Vec2CTCTokenizer(str(vocab_file), word_delimiter_token="|").save_pretrained(folder)


def _write_tokenizer(folder: Path, vocab_size: int) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], show_progress=False)
    tokenizer.train_from_iterator(_TOKENIZER_CORPUS.splitlines(), trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", tokenizer.token_to_id("</s>"))]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(folder)
