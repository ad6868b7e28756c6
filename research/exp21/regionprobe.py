"""Round 6: how well the toy CLIP names each object from its pooled F_ctx tokens (its region head
against the 24 phrases), and its kind and colour alone, on 300 held-out scenes.

    PYTHONPATH=<worktree> python research/exp21/regionprobe.py   # the parts in <worktree>'s assets
"""
import torch
from safetensors.torch import load_file
from minijarvis.config import TOY_ASSETS
from minijarvis.llm import build_tokenizer
from minijarvis.toyworld import parts as P
from minijarvis.toyworld.build import HELD_OUT, encoder_geometry
from minijarvis.data.shapes import KINDS
from minijarvis.toyworld.world import PHRASES, scene_tensors
torch.set_num_threads(1)
tok = build_tokenizer()
data = scene_tensors(300, 0, *encoder_geometry(), offset=HELD_OUT)
clip, heads = P.new_vit("tiny-clip"), P.CaptionHeads(len(tok), 64)
clip.load_state_dict(load_file(str(TOY_ASSETS / "caption_encoder.safetensors")))
heads.load_state_dict(load_file(str(TOY_ASSETS / "caption_heads.safetensors")))
clip.eval()
with torch.no_grad():
    _, tokens = heads.image_and_tokens(clip, data["images"])
    reg = torch.nn.functional.normalize(heads.region_proj(P.pool_regions(tokens, data["share"])), dim=-1)
    logits = reg @ heads.text(P.encode_texts(tok, list(PHRASES))).T
    ph = data["phrase"]; present = ph >= 0
    pred = logits.argmax(-1)
    acc = (pred[present] == ph[present]).float().mean()
    print(TOY_ASSETS, "region phrase top1 %.3f" % acc, "of", int(present.sum()))
    k = len(KINDS)  # PHRASES runs colour by colour, each over the kinds
    kind = (pred % k == ph % k)[present].float().mean(); col = (pred // k == ph // k)[present].float().mean()
    print("kind %.3f colour %.3f" % (kind, col))
