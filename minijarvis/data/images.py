"""Images as the encoders see them: loaded, converted to RGB, fitted to the square input the way
LLaVA's release does (stage 1: short side to the input size and a centre crop, as CLIP's
processor; stage 2: padded to a square in the encoder's mean colour), and bounded before any
work (:func:`fit_problem`: an image whose fitting would explode is refused, not resized).

An image that cannot be used raises :class:`~minijarvis.errors.BadRecord` naming its record.
"""
from __future__ import annotations


import numpy as np
import torch
from PIL import Image

from minijarvis.config import IMAGE_ASPECTS
from minijarvis.errors import BadRecord


def _to_rgb(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Any PIL mode -> RGB. 16/32-bit grayscale is rescaled (PIL's own convert would clip it
    to white); transparency is composited on ``background`` (transparent = no content, like
    the padding), where LLaVA's plain ``convert("RGB")`` would expose hidden colours."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        a = np.asarray(img, dtype=np.float64)
        scale = 65535.0 if img.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        img = Image.fromarray(np.clip(a / scale * 255 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode in ("P", "L", "RGB") and "transparency" in img.info or img.mode in (
            "LA", "La", "PA", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        out = Image.new("RGB", img.size, background)
        out.paste(img, mask=img.getchannel("A"))
        return out
    return img.convert("RGB")


def expand2square(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """LLaVA's "pad": the image centred on a square canvas of side max(w, h) in ``background``."""
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(img.mode, (side, side), background)
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


def shortest_edge_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) after resizing the short side to ``size`` and the long side in
    proportion, truncated as transformers' ``get_resize_output_image_size`` does
    (``int(size * long / short)``, never rounded up)."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    return (size, new_long) if width <= height else (new_long, size)


def resize_and_center_crop(img: Image.Image, size: int) -> Image.Image:
    """CLIP's processor (``CLIPImageProcessor`` on PIL, shortest_edge = crop = ``size``): PIL
    bicubic resize of the uint8 image to :func:`shortest_edge_size`, then the centred
    ``size x size`` window whose top-left corner is ``((w - size) // 2, (h - size) // 2)``."""
    width, height = shortest_edge_size(*img.size, size)
    img = img.resize((width, height), Image.BICUBIC)
    left, top = (width - size) // 2, (height - size) // 2
    return img.crop((left, top, left + size, top + size))


MAX_ASPECT = 50  # long side / short side; LLaVA's data has panoramas and banners up to ~20:1


def fit_problem(width: int, height: int, size: int, aspect: str) -> str:
    """Why fitting a ``width x height`` image costs too much, or "" if it does not: an aspect
    ratio above MAX_ASPECT, or more pixels made by the resize / padding than PIL's own
    decompression-bomb limit (a 1 x 50,000 PNG of 281 bytes passes that limit, but its crop
    resize would be 192 x 9,600,000)."""
    short, long = min(width, height), max(width, height)
    if short < 1 or long / short > MAX_ASPECT:
        return f"image {width}x{height}: aspect ratio {long}:{short} is beyond {MAX_ASPECT}:1"
    made = {"crop": size * int(size * long / short), "pad": long * long, "resize": size * size}[aspect]
    limit = Image.MAX_IMAGE_PIXELS or 89_478_485
    if made > limit:
        return f"image {width}x{height}: fitting it ({aspect}) makes {made:,} pixels, over {limit:,}"
    return ""


def load_image(src, size: int, mean, aspect: str = "pad", record_id: str = "") -> torch.Tensor:
    """Path or PIL image -> float [3, size, size] in [0, 1] (uint8 / 255, as the processor's
    rescale; each encoder applies its own mean/std): :func:`image_to_float` of
    :func:`load_image_uint8` (which documents ``aspect`` and the errors)."""
    return image_to_float(load_image_uint8(src, size, mean, aspect, record_id))


def image_to_float(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [3, S, S] -> float in [0, 1]: the processor's rescale (pixels / 255)."""
    return pixels.float().div(255)


def load_image_uint8(src, size: int, mean, aspect: str = "pad", record_id: str = "") -> torch.Tensor:
    """Path or PIL image -> uint8 [3, size, size], fitted to the encoder's square.

    ``aspect="crop"``: :func:`resize_and_center_crop` (CLIP's processor; the release's stage 1);
    ``"pad"``: :func:`expand2square` in the encoder's mean colour ``int(m * 255)``, then bicubic
    resize (LLaVA's stage 2); ``"resize"``: bicubic resize straight to size x size (distorts).
    A missing or undecodable file, or one too costly to fit (:func:`fit_problem`), raises
    :class:`BadRecord` (id = ``record_id`` or the path).
    """
    if aspect not in IMAGE_ASPECTS:
        raise ValueError(f"aspect must be one of {', '.join(IMAGE_ASPECTS)}; got {aspect!r}")
    background = tuple(int(m * 255) for m in mean)
    rid = record_id or str(src)
    if isinstance(src, Image.Image):
        if fit_problem(*src.size, size, aspect):
            raise BadRecord(rid, fit_problem(*src.size, size, aspect))
        rgb = _to_rgb(src, background)
    else:
        try:
            with Image.open(src) as f:
                if fit_problem(*f.size, size, aspect):  # from the header: before decoding
                    raise BadRecord(rid, fit_problem(*f.size, size, aspect))
                f.load()  # decode now: truncated/corrupt files fail here, not later
                rgb = _to_rgb(f, background)
        except FileNotFoundError:
            raise BadRecord(rid, f"image file not found: {src}") from None
        except BadRecord:
            raise
        except Exception as e:  # PIL raises many types for bad files; all mean "unreadable"
            raise BadRecord(rid, f"cannot decode image {src}: {type(e).__name__}: {e}") from None
    if aspect == "crop":
        rgb = resize_and_center_crop(rgb, size)
    else:
        if aspect == "pad":
            rgb = expand2square(rgb, background)
        rgb = rgb.resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1)


def blank_image(size: int, mean) -> torch.Tensor:
    """A blank image as :func:`load_image` returns one: [3, size, size] in the encoder's mean
    colour ``int(m * 255) / 255`` (the colour LLaVA pads with, "no content"). ``--blank-images``
    puts it in place of every image: the text-only bound (study.py's ``llava-blank``)."""
    colour = torch.tensor([int(m * 255) / 255 for m in mean], dtype=torch.float32)
    return colour[:, None, None].expand(3, size, size).clone()
