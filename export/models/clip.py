"""OpenAI CLIP (ViT image tower + causal text tower), export-friendly, in OpenAI's state-dict key layout.

Architecture as OpenAI's `model.py`: pre-LN residual attention blocks with QuickGELU MLPs; the image tower embeds
16x16 patches, prepends a class token, adds learned positions and projects the class token after `ln_post`; the
text tower adds learned positions to token embeddings, runs under a causal mask and projects the feature at the
end-of-text token (found as the argmax of the token ids: EOT 49407 is the largest id). Everything runs in fp32
(OpenAI ships fp16 weights; upstream ZegFormer computed CLIP in fp16 on GPU, in fp32 on CPU).

Loading (`load_clip_state_dict`): OpenAI's TorchScript archive (e.g. ViT-B-16.pt; only `torch.jit.load(...)
.state_dict()` is used, on CPU) or a plain state-dict file read with weights_only=True, in the OpenAI layout, also
with a prefix such as `sem_seg_head.predictor.clip_model.` (a ZegFormer gzss checkpoint).
"""
from __future__ import annotations

import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ...runtime.errors import ZsdError
from ..checkpoint import key_problems, summarize_keys
from .transformer_decoder import MultiheadAttention

SOT_TOKEN = 49406
EOT_TOKEN = 49407
# Entries of OpenAI's archives that are not parameters (ints stored next to the weights); never used.
CLIP_NON_PARAMETER_KEYS = ("input_resolution", "context_length", "vocab_size")
# Prefix under which ZegFormer's gzss checkpoints store CLIP.
ZEGFORMER_CLIP_PREFIX = "sem_seg_head.predictor.clip_model."


@dataclass(frozen=True)
class CLIPSpec:
    """Hyper-parameters; defaults are ViT-B/16 (`CLIP(512, 224, 12, 768, 16, 77, 49408, 512, 8, 12)`)."""

    embed_dim: int = 512
    image_resolution: int = 224
    vision_layers: int = 12
    vision_width: int = 768
    vision_patch_size: int = 16
    context_length: int = 77
    vocab_size: int = 49408
    transformer_width: int = 512
    transformer_heads: int = 8
    transformer_layers: int = 12

    @property
    def vision_heads(self) -> int:
        return self.vision_width // 64

    @property
    def grid(self) -> int:
        return self.image_resolution // self.vision_patch_size


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, width * 4)),
            ("gelu", QuickGELU()),
            ("c_proj", nn.Linear(width * 4, width)),
        ]))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, blocked: torch.Tensor | None = None) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, blocked)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """Batch-first stack of `resblocks` (keys `resblocks.{i}.*`)."""

    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))

    def forward(self, x: torch.Tensor, blocked: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, blocked)
        return x


class VisionTransformer(nn.Module):
    def __init__(self, spec: CLIPSpec) -> None:
        super().__init__()
        w = spec.vision_width
        self.input_resolution = spec.image_resolution
        self.conv1 = nn.Conv2d(3, w, kernel_size=spec.vision_patch_size, stride=spec.vision_patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(w))
        self.positional_embedding = nn.Parameter(torch.zeros(spec.grid ** 2 + 1, w))
        self.ln_pre = nn.LayerNorm(w)
        self.transformer = Transformer(w, spec.vision_layers, spec.vision_heads)
        self.ln_post = nn.LayerNorm(w)
        self.proj = nn.Parameter(torch.zeros(w, spec.embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N,3,R,R] CLIP-normalised -> [N, embed_dim] (not normalised)."""
        x = self.conv1(x).flatten(2).transpose(1, 2)  # [N, grid^2, width]
        cls = self.class_embedding.view(1, 1, -1).expand(x.shape[0], 1, -1)
        x = torch.cat((cls, x), dim=1) + self.positional_embedding
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0, :]) @ self.proj


class CLIP(nn.Module):
    """Both towers with OpenAI's parameter names (the 302 keys of ViT-B/16, `logit_scale` included)."""

    def __init__(self, spec: CLIPSpec = CLIPSpec()) -> None:
        super().__init__()
        self.spec = spec
        self.visual = VisionTransformer(spec)
        self.transformer = Transformer(spec.transformer_width, spec.transformer_layers, spec.transformer_heads)
        self.token_embedding = nn.Embedding(spec.vocab_size, spec.transformer_width)
        self.positional_embedding = nn.Parameter(torch.zeros(spec.context_length, spec.transformer_width))
        self.ln_final = nn.LayerNorm(spec.transformer_width)
        self.text_projection = nn.Parameter(torch.zeros(spec.transformer_width, spec.embed_dim))
        self.logit_scale = nn.Parameter(torch.zeros([]))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)

    def encode_text(self, token_ids: torch.Tensor) -> torch.Tensor:
        """token_ids [N, context_length] (int) -> [N, embed_dim] (not normalised)."""
        return _text_tower(self, token_ids)


def _text_tower(m: nn.Module, token_ids: torch.Tensor) -> torch.Tensor:
    """Text tower over the modules of `m` (a CLIP or a CLIPTextEncoder, which share the attribute names)."""
    n_ctx = token_ids.shape[1]
    x = m.token_embedding(token_ids) + m.positional_embedding[:n_ctx]
    causal = torch.ones(n_ctx, n_ctx, dtype=torch.bool, device=x.device).triu(1)  # True = may not attend
    x = m.ln_final(m.transformer(x, causal))
    # End-of-text position = argmax of the ids (EOT is the largest id); float ids are exact below 2^24.
    eot = token_ids.to(torch.float32).argmax(dim=-1)
    x = x.gather(1, eot.view(-1, 1, 1).expand(-1, 1, x.shape[-1])).squeeze(1)
    return x @ m.text_projection


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


class CLIPTextEncoder(nn.Module):
    """Graph `text_encoder`: token_ids [C, 77] int64 -> L2-normalised text embeddings [C, embed_dim]."""

    def __init__(self, clip: CLIP) -> None:
        super().__init__()
        self.transformer = clip.transformer
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return _normalize(_text_tower(self, token_ids))


class CLIPImageEncoder(nn.Module):
    """images [N,3,R,R] CLIP-normalised -> L2-normalised image embeddings [N, embed_dim]."""

    def __init__(self, clip: CLIP) -> None:
        super().__init__()
        self.visual = clip.visual

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return _normalize(self.visual(images))


# ----------------------------------------------------------------------------------------------------- loading
def clip_spec_from_state_dict(state: Mapping[str, torch.Tensor], source: str = "the CLIP file") -> CLIPSpec:
    """Infer the architecture from tensor shapes (as OpenAI's build_model does); ViT image towers only."""
    missing = [k for k in _REQUIRED_KEYS if k not in state]
    if missing:
        resnet = any(k.startswith("visual.layer1.") for k in state)
        hint = (" It holds a ResNet image tower (CLIP RN50/RN101...); ZegFormer uses ViT-B/16."
                if resnet else "")
        raise ZsdError(
            f"{source} is not an OpenAI CLIP ViT model: {len(missing)} required key(s) missing: "
            f"{summarize_keys(missing)}.{hint}",
            "pass OpenAI's ViT-B-16.pt (TorchScript archive) or a state dict in its key layout "
            "(visual.*, transformer.*, token_embedding.weight, positional_embedding, ln_final.*, text_projection).")
    vision_width = state["visual.conv1.weight"].shape[0]
    patch = state["visual.conv1.weight"].shape[-1]
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    width = state["ln_final.weight"].shape[0]
    return CLIPSpec(
        embed_dim=state["text_projection"].shape[1],
        image_resolution=patch * grid,
        vision_layers=len({k.split(".")[3] for k in state if k.startswith("visual.transformer.resblocks.")}),
        vision_width=vision_width,
        vision_patch_size=patch,
        context_length=state["positional_embedding"].shape[0],
        vocab_size=state["token_embedding.weight"].shape[0],
        transformer_width=width,
        transformer_heads=width // 64,
        transformer_layers=len({k.split(".")[2] for k in state if k.startswith("transformer.resblocks.")}),
    )


_REQUIRED_KEYS = (
    "visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding", "visual.proj",
    "visual.ln_pre.weight", "visual.ln_post.weight", "token_embedding.weight", "positional_embedding",
    "ln_final.weight", "text_projection", "transformer.resblocks.0.attn.in_proj_weight",
    "visual.transformer.resblocks.0.attn.in_proj_weight",
)


def _is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    # TorchScript archives carry the serialized code and constants; torch.save zips do not.
    return any(n.endswith("/constants.pkl") for n in names) or any("/code/" in n for n in names)


def read_clip_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The raw {key: tensor} of a CLIP file (TorchScript archive or a plain state dict), prefixes kept."""
    path = Path(path)
    if not path.is_file():
        raise ZsdError(f"CLIP file {path} does not exist.",
                       "pass OpenAI's ViT-B-16.pt (from the openai/CLIP download list) with --clip.")
    if _is_torchscript_archive(path):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated, still reads archives
                obj = torch.jit.load(str(path), map_location="cpu").state_dict()
        except Exception as e:  # noqa: BLE001 (torch raises assorted RuntimeErrors for broken archives)
            raise ZsdError(f"CLIP file {path} is a TorchScript archive that could not be read "
                           f"({str(e).splitlines()[0] if str(e) else type(e).__name__}).",
                           "re-download ViT-B-16.pt; the file may be truncated.") from None
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ZsdError(f"CLIP file {path} is neither a TorchScript archive nor a state dict loadable with "
                           f"weights_only=True ({msg}).",
                           "pass OpenAI's ViT-B-16.pt or a state dict saved with torch.save(model.state_dict()). "
                           "zsdeploy never unpickles arbitrary objects.") from None
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model"):
            if wrapper in obj and isinstance(obj[wrapper], Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise ZsdError(f"CLIP file {path} holds no state dict (found {type(obj).__name__}).",
                       "pass OpenAI's ViT-B-16.pt or a CLIP state dict.")
    return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def load_clip_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], CLIPSpec]:
    """Read a CLIP file and return (fp32 state dict in OpenAI key layout, its CLIPSpec).

    Every key is accounted for: CLIP parameters, OpenAI's three non-parameter ints, or an error naming the rest.
    A common prefix (`module.`, ZegFormer's `sem_seg_head.predictor.clip_model.`) is stripped; in a whole
    ZegFormer gzss checkpoint the non-CLIP keys are ignored.
    """
    raw = read_clip_file(path)
    state = _strip_prefix(raw)
    spec = clip_spec_from_state_dict(state, f"CLIP file {path}")
    expected = CLIP(spec).state_dict()
    unexpected = [k for k in state if k not in expected and k not in CLIP_NON_PARAMETER_KEYS]
    problems = key_problems(state, expected, unexpected)
    if problems:
        raise ZsdError(f"CLIP file {path} does not match OpenAI's CLIP ViT layout: " + "; ".join(problems) + ".",
                       "pass OpenAI's ViT-B-16.pt or a state dict in its layout (see "
                       "../shared/golden/manifests/clip_vit_b16.tsv).")
    return OrderedDict((k, state[k].detach().to(torch.float32)) for k in expected), spec


def _strip_prefix(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    anchor = "visual.conv1.weight"
    hits = [k for k in raw if k.endswith(anchor)]
    if len(hits) != 1:
        return raw  # no (or ambiguous) CLIP: clip_spec_from_state_dict names what is missing
    prefix = hits[0][: -len(anchor)]
    if not prefix:
        return raw
    return {k[len(prefix):]: v for k, v in raw.items() if k.startswith(prefix)}


def build_clip(path: str | Path | None) -> tuple[CLIP, CLIPSpec, str]:
    """CLIP in eval mode from a file, or (path None) ViT-B/16 with deterministic stand-in weights.

    Stand-in tensors are generated from ZegFormer's prefixed names (`sem_seg_head.predictor.clip_model.<key>`),
    the rule of the golden gzss fixtures. Returns (model, spec, sha256 or "").
    """
    from ..checkpoint import sha256_of
    from ..standin import standin_tensor

    if path is None:
        spec = CLIPSpec()
        model = CLIP(spec).eval()
        model.load_state_dict({k: standin_tensor(ZEGFORMER_CLIP_PREFIX + k, tuple(v.shape))
                               for k, v in model.state_dict().items()})
        return model, spec, ""
    state, spec = load_clip_state_dict(path)
    model = CLIP(spec).eval()
    model.load_state_dict(state, strict=True)
    return model, spec, sha256_of(Path(path))
