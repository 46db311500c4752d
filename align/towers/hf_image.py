"""Image tower over a Hugging Face vision encoder (`type: hf_image`): CLIP and SigLIP vision models, DINOv2, ...

    towers:
      image: {type: hf_image, model: /models/clip-vit-base-patch32, lock: true, unlocked_layers: 2}
      image: {type: hf_image, model: facebook/dinov2-small, pooling: cls, proj: mlp}

Keys: model (a folder with config.json + weights + preprocessor_config.json, or a Hub id),
pooling (auto | pooler | cls | mean; see hf_encoder), proj (linear | mlp | none), lock,
unlocked_layers, from_config (true: the architecture from config.json, no weights read: an align export's tower,
whose weights are the export's). A full CLIP/SigLIP checkpoint is accepted too: its `vision_model` is used.

Preprocessing is the folder's own `AutoImageProcessor` (resize, crop, rescale, normalise),
run per sample in the data workers: PIL image -> float [3, H, W]. It is the same for train
and eval (HF processors have no augmentation).
"""
import torch

from align.towers import TOWERS
from align.towers.common import build_pretrained_tower
from align.towers.hf_encoder import HFEncoderTower

KEYS = ("model", "pooling", "proj", "lock", "unlocked_layers", "from_config")


class HFImagePreprocess:
    """PIL image -> float [3, H, W] through a transformers image processor (picklable for data workers)."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, image) -> torch.Tensor:
        return self.processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]


class HFImageTower(HFEncoderTower):
    modality = "image"
    input_name = "pixel_values"

    def __init__(self, model: str, embed_dim: int, *, pooling: str = "auto", proj: str = "linear",
                 from_config: bool = False, where: str = "model.towers.image"):
        super().__init__()
        from align.towers.hf_encoder import load_preprocessor, load_trunk
        self.processor = load_preprocessor("AutoImageProcessor", model, where, "image processor")
        self.model_name = model
        trunk = load_trunk(model, "image", where, pooling, from_config=from_config)
        self._finish(trunk, embed_dim, pooling, proj, where)

    @property
    def image_size(self):
        return tuple(self.dummy_input(1).shape[-2:])

    def preprocess(self, train: bool):
        return HFImagePreprocess(self.processor)

    def input_shape(self):
        """What the processor makes of a square and of a wide image: that shape when they agree (a processor that
        resizes to a fixed size), None when it keeps the aspect ratio. Worked out once."""
        if "_input_shape" not in self.__dict__:
            from align.media.image import transform_shape
            self.__dict__["_input_shape"] = transform_shape(HFImagePreprocess(self.processor))
        return self.__dict__["_input_shape"]

    def dummy_input(self, batch_size: int) -> torch.Tensor:              # [B, 3, H, W]
        from PIL import Image
        x = HFImagePreprocess(self.processor)(Image.new("RGB", (256, 256)))
        return torch.randn(batch_size, *x.shape)

    def preprocess_config(self) -> dict:
        p = self.processor
        return {"tower": "hf_image", "model": self.model_name, "model_type": self.model_type,
                "processor": type(p).__name__, "processor_config": p.to_dict(),
                "image_size": list(self.image_size), "mean": list(getattr(p, "image_mean", []) or []),
                "std": list(getattr(p, "image_std", []) or []),
                "how": "transformers.AutoImageProcessor.from_pretrained(model)(images=img)['pixel_values']"}


@TOWERS.register("hf_image")
def build_hf_image_tower(cfg: dict, modality: str, embed_dim: int) -> HFImageTower:
    return build_pretrained_tower(HFImageTower, cfg, modality, embed_dim, KEYS, tower_type="hf_image", encodes="image",
                                  model_hint="a local transformers folder or a Hub id")
