"""The MLLM: F_ctx -> proj -> LLM, plus JARVIS's z, proj_tgt and F_tgt. One forward, every loss.

Data flow of one stage-1 JARVIS step (DESIGN.md §2):

    images --F_ctx--> [B,N,Dc] --proj--> [B,N,d]          N = H*W visual slots
    masks  = MaskSampler(B)                                 context / target blocks per slot
    slots  = target slots replaced by z (+ phi(i))          dropped slots keep their features
    seq    = [text before image][N slots][caption][pad]     spliced at the <image> token
    mask   = build_attention_mask(layout, ...)              the four rules, one forward pass
    skip   = visible_positions(layout, ...)                 dropped slots nobody sees leave the LLM
    LLM(seq, mask) -> logits -> L_NTP ;  hook on layer j -> h_j -> proj_tgt -> L_JEPA vs F_tgt
    loss   = L_NTP + L_JEPA   (with probability lambda: plain NTP on the unmasked image)

VisPer-LM (``method="visper"``) shares all of it but its loss: task tokens after the image,
predictors at a few layers against several target encoders (``visper.py``, its data flow).
The LLM and its tokenizer come from ``llm.py``. Inference and checkpoints are machinery, outside
the method: ``evaluation/inference.py`` (generate, score_options) and ``training/checkpoint.py``.
"""
from __future__ import annotations

import dataclasses
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attn_mask import build_additive_mask, build_attention_mask, to_additive, to_block_mask, visible_positions
from .config import MaskConfig, ModelConfig, default_jepa_layer
from .encoders import build_context_encoder
from .losses import align_loss, jepa_loss, token_cross_entropy
from .masking import MaskSampler
from .llm import IMAGE_TOKEN, build_llm, load_tokenizer
from .targets import build_target_encoder
from .visper import TaskTokens, VisperHead, parse_targets, visper_losses


def sincos_2d(grid: tuple[int, int], dim: int) -> torch.Tensor:
    """The paper's phi(i): 2D sine-cosine position code of each slot, [H*W, dim] (raster order).

    Half the channels encode the row, half the column, each as [sin(p*w_k), cos(p*w_k)] with
    w_k = 10000^(-k/(dim/4)) (the MAE / I-JEPA formula). ``dim`` must be a multiple of 4.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position codes need a width divisible by 4, got {dim}")
    h, w = grid
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")

    def code(pos):  # [H*W] -> [H*W, dim/2]
        angles = pos.reshape(-1, 1).double() * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([code(rows), code(cols)], dim=1).float()


def splice_indices(input_ids: torch.Tensor, image_token_id: int, num_visual: int):
    """Where each position of the spliced sequence comes from.

    The single ``<image>`` token of a row becomes ``num_visual`` slots in place. Returns
    ``(text_index, slot_index, is_visual, image_start, has_image, length)``: for every output
    position p of row b, ``text_index[b, p]`` is the input position it copies (``-1`` past the
    row's end), ``slot_index[b, p]`` the visual slot (valid where ``is_visual``). Rows without
    an image are copied unchanged and padded at the end. All [B, L] tensors; no Python loops.
    """
    is_img = input_ids == image_token_id
    counts = is_img.sum(1)
    if (counts > 1).any():
        raise ValueError("each row may hold at most one <image> token; found "
                         f"{counts.max().item()} in one row")
    has_image = counts == 1
    bsz, t = input_ids.shape
    length = t + num_visual - 1 if has_image.any() else t
    p = torch.arange(length, device=input_ids.device).expand(bsz, length)
    image_start = torch.where(has_image, is_img.float().argmax(1), length)  # length: never reached
    start = image_start[:, None]
    is_visual = (p >= start) & (p < start + num_visual)
    text_index = torch.where(p < start, p, p - num_visual + 1)
    text_index = torch.where(is_visual | (text_index >= t), -1, text_index)
    slot_index = (p - start).clamp(0, num_visual - 1)
    return text_index, slot_index, is_visual, image_start, has_image, length


def insert_latent(vis: torch.Tensor, target_union: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
    """The slots the LLM sees: ``latent`` (z, or z + phi(i): [d] or [N, d]) where
    ``target_union`` bool [B, N] is True, ``vis`` [B, N, d] elsewhere (context and dropped
    slots keep their features). Out of place, in ``vis``'s dtype; z gets the gradient."""
    return torch.where(target_union[..., None], latent.to(vis.dtype), vis)


def jepa_coin(generator: torch.Generator | None, lam: float) -> bool:
    """The lambda coin of a stage-1 step: True = run JEPA. One ``torch.rand(())`` draw from
    ``generator``; JEPA is skipped (plain NTP, unmasked image) with probability ``lam``."""
    return bool(torch.rand((), generator=generator) >= lam)


@contextmanager
def layer_outputs(layers: nn.ModuleList, indices):
    """Forward hooks on decoder ``layers``: yields ``{j: h_j}``, filled during the forward, with
    h_j = output of layer j-1 = HF ``hidden_states[j]`` (no final norm). Only these layers'
    outputs are kept (no ``output_hidden_states``); the hooks go when the block exits."""
    out, handles = {}, []
    for j in sorted(set(indices)):
        def hook(module, args, output, j=j):
            out[j] = output[0] if isinstance(output, tuple) else output
        handles.append(layers[j - 1].register_forward_hook(hook))
    try:
        yield out
    finally:
        for handle in handles:
            handle.remove()


class JarvisModel(nn.Module):
    """LLaVA-style MLLM with JARVIS's masked latent prediction (DESIGN.md §1–§3).

    ``stage="align"``: trains ``proj`` (+ ``z``, ``proj_tgt``); ``stage="finetune"``: trains
    ``proj`` and the LLM (+ ``proj_tgt`` for VIRAL). Encoders never train. The target encoder,
    ``z`` and ``proj_tgt`` exist only where the method uses them (JARVIS/nomask in stage 1,
    VIRAL in stage 2), so a stage-2 JARVIS checkpoint carries no trace of them.
    """

    def __init__(self, cfg: ModelConfig, mask_cfg: MaskConfig | None = None, stage: str = "align",
                 tokenizer=None):
        super().__init__()
        cfg.validate()
        if stage not in ("align", "finetune"):
            raise ValueError(f"stage must be 'align' or 'finetune', got {stage!r}")
        specs = parse_targets(cfg.visper_targets) if cfg.method == "visper" else None  # before any work
        # config.json records the block F_ctx reads, not "the family default" (None)
        layer, norm = cfg.context_features()
        cfg = dataclasses.replace(cfg, ctx_layer=layer, ctx_norm=norm)
        self.cfg, self.mask_cfg, self.stage = cfg, mask_cfg or MaskConfig(), stage
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.tokenizer)
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.llm = build_llm(cfg)
        self.context_encoder = build_context_encoder(cfg)
        self.image_size = self.context_encoder.image_size
        self.image_mean = self.context_encoder.mean
        self.image_aspect = cfg.resolved_image_aspect(stage)  # how data.load_image fits images
        self.grid = tuple(self.context_encoder.grid)
        self.num_visual = self.grid[0] * self.grid[1]
        d_llm = self.llm.config.get_text_config().hidden_size
        num_layers = self.llm.config.get_text_config().num_hidden_layers
        self.proj = nn.Sequential(nn.Linear(self.context_encoder.dim, d_llm), nn.GELU(),
                                  nn.Linear(d_llm, d_llm))
        self.jepa_layer = cfg.jepa_layer or default_jepa_layer(num_layers, cfg.method)
        if self.jepa_layer > num_layers:
            raise ValueError(f"jepa_layer {self.jepa_layer} (--jepa-layer) > the LLM's {num_layers} layers")
        self.bidirectional_visual = cfg.resolved_bidirectional_visual()
        self.target_encoder = self.proj_tgt = self.z = self.sampler = None
        if self.uses_target_encoder:
            self.target_encoder = build_target_encoder(cfg, self.image_size, self.grid)
            d_tgt = self.target_encoder.dim
            self.proj_tgt = nn.Sequential(nn.Linear(d_llm, d_tgt, bias=False), nn.GELU(),
                                          nn.Linear(d_tgt, d_tgt, bias=False))
        if cfg.method == "jarvis" and stage == "align":
            self.z = nn.Parameter(torch.randn(d_llm) * 0.02)  # one learnable latent, N(0, 0.02)
            self.sampler = MaskSampler(self.grid, **self.mask_cfg.sampler_kwargs())
            if cfg.pos_embed:
                self.register_buffer("phi", sincos_2d(self.grid, d_llm), persistent=False)
        self.task_tokens = self.visper = None
        if cfg.method == "visper":  # tokens stay for stage 2 and inference; the head is stage 1's
            self.task_tokens = TaskTokens(specs, self.num_visual, d_llm)
            if stage == "align":
                self.visper = VisperHead(specs, num_layers, d_llm, self.image_size, self.grid,
                                         cfg.visper_temperature)
        # Positions the <image> token becomes: the image slots, then the task tokens if any.
        self.num_slots = self.num_visual + (self.task_tokens.count if self.task_tokens else 0)
        self.set_trainable()

    # ------------------------------------------------------------------ set-up
    @property
    def uses_target_encoder(self) -> bool:
        m = self.cfg.method
        return (m in ("jarvis", "nomask") and self.stage == "align") or (
            m == "viral" and self.stage == "finetune")

    def set_trainable(self) -> None:
        """Freezing per parameter group (DESIGN.md §2.7): encoders never train; the LLM trains
        in stage 2 only; everything minijarvis adds (proj, z, proj_tgt) always trains."""
        self.llm.requires_grad_(self.stage == "finetune")
        for enc in (self.context_encoder, self.target_encoder):
            if enc is not None:
                enc.requires_grad_(False)
        for part in (self.proj, self.proj_tgt):
            if part is not None:
                part.requires_grad_(True)
        if self.z is not None:
            self.z.requires_grad_(True)
        if self.task_tokens is not None:  # VisPer-LM: trained in stage 1, frozen afterwards
            self.task_tokens.requires_grad_(self.stage == "align")
        if self.visper is not None:  # predictors and temperatures; its targets stay frozen
            self.visper.predictors.requires_grad_(True)
            self.visper.log_scales.requires_grad_(True)

    def enable_gradient_checkpointing(self) -> None:
        # Non-reentrant: works with a frozen LLM and grad-requiring inputs_embeds (DESIGN.md §5),
        # but only while the LLM is in train() mode, which JarvisModel.train() keeps.
        self.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.llm.config.use_cache = False

    # ------------------------------------------------------------------ forward
    def forward(self, batch: dict, generator: torch.Generator | None = None,
                run_jepa: bool | None = None, mask_generator: torch.Generator | None = None) -> dict:
        """One forward pass; returns ``loss``, ``ntp_loss``, the auxiliary loss and ``jepa_ran``.

        ``batch`` as made by ``data.llava.collate``. ``generator`` draws the lambda coin: seed it
        identically on every rank so all ranks take the same branch. ``mask_generator`` draws
        the masks (default: ``generator``); train.py gives each rank its own, as the release.
        ``run_jepa`` overrides the lambda draw (True/False) for tests and tutorials.
        """
        x = self.prepare_inputs(batch, generator, run_jepa, mask_generator, self.cfg.skip_dropped)
        jepa, has_image = x["jepa_ran"], x["has_image"]
        aux_name = {"jarvis": "jepa_loss", "nomask": "align_loss", "viral": "align_loss"}.get(
            self.cfg.method)
        aligns = aux_name is not None and self.proj_tgt is not None and bool(has_image.any()) and (
            jepa or self.cfg.method != "jarvis")
        # F_tgt runs before the LLM so its transient activations never sit on top of the LLM's.
        target = self.target_encoder(batch["images"]) if aligns else None
        layers = [self.jepa_layer] if aligns else []
        if self.visper is not None:  # VisPer-LM's targets, also before the LLM
            target = self.visper.encode_batch(batch["images"], has_image)
            layers = self.visper.all_layers if target is not None else []
        with layer_outputs(self.llm.model.layers, layers) as h:
            hidden = self.llm.model(inputs_embeds=x["embeds"], attention_mask=x["mask"],
                                    position_ids=x["positions"], use_cache=False).last_hidden_state
        result = {"ntp_loss": self._ntp_loss(hidden, x["labels"]), "jepa_ran": jepa}
        loss = result["ntp_loss"]
        if aux_name is not None:
            result[aux_name] = self._aux_loss(h[self.jepa_layer], target, x) if aligns else None
            if aligns:
                loss = loss + result[aux_name]
        if self.visper is not None and target is not None:
            result.update(visper_losses(self, h, target, x))
            loss = loss + result["visper_loss"]
        if not has_image.all():
            # Text-only rows: keep proj (and z) in the graph so DDP's reducer never waits forever.
            loss = loss + 0.0 * x["vis"].sum()
        result["loss"] = loss
        return result

    def _aux_loss(self, h: torch.Tensor, target: torch.Tensor, x: dict) -> torch.Tensor:
        """L_JEPA on the target blocks (masked step), or the alignment loss of nomask / VIRAL on
        every visual slot: proj_tgt(h_j) at the visual slots against F_tgt's features.

        L_JEPA reads only slots inside a target block, so proj_tgt runs on those alone (about
        half the slots), all samples' slots flattened into one row: jepa_loss averages block k
        over every sample's tokens anyway, so the value is the same as on [B, N]."""
        h = h[0] if isinstance(h, tuple) else h
        if x["jepa_ran"]:
            b, i = x["layout"].target_union.nonzero(as_tuple=True)  # [M] sample, slot
            at = x["image_start"][b] + i  # position in the full sequence
            if x["positions"] is not None:  # dropped slots were left out: where it went
                at = x["index_of"][b, at]
            pred = self.proj_tgt(h[b, at])  # [M, D]
            blocks = x["layout"].targets[b, :, i].T  # [K, M]
            return jepa_loss(pred[None], target[b, i][None], blocks[None], self.cfg.jepa_distance)
        start = x["image_start"].clamp(max=h.shape[1] - self.num_visual)
        idx = start[:, None] + torch.arange(self.num_visual, device=h.device)
        pred = self.proj_tgt(h.gather(1, idx[..., None].expand(-1, -1, h.shape[-1])))
        rows = x["has_image"][:, None].expand(-1, self.num_visual)
        return align_loss(pred, target, rows, self.cfg.jepa_distance)

    def supervised_logits(self, hidden: torch.Tensor, labels: torch.Tensor):
        """The LM head applied only where a label is supervised: (logits [M, V], their targets [M],
        keep [B, L-1]), with logits[:, t] predicting labels[:, t + 1] as ``ntp_loss`` shifts. Equal
        to the full logits at those places, without the [B, L, V] tensor that would otherwise be
        the largest of a stage-1 step (576 image slots, 256k vocabulary) or of option scoring."""
        targets = labels[:, 1:]
        keep = targets != -100
        logits = self.llm.lm_head(hidden[:, :-1][keep])
        cap = getattr(self.llm.config, "final_logit_softcapping", None)
        if cap:  # Gemma2 soft-caps its logits inside ForCausalLM.forward; do the same
            logits = torch.tanh(logits / cap) * cap
        return logits, targets[keep], keep

    def _ntp_loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """L_NTP on the supervised positions only (``supervised_logits``): equal to
        ``ntp_loss(llm(...).logits, labels)``."""
        logits, targets, _ = self.supervised_logits(hidden, labels)
        return token_cross_entropy(logits, targets)

    def prepare_inputs(self, batch: dict, generator: torch.Generator | None = None,
                       run_jepa: bool | None = False,
                       mask_generator: torch.Generator | None = None, skip_dropped: bool = False) -> dict:
        """Splice the image into the sequence and build its attention mask.

        Returns ``embeds`` [B,L,d], ``mask`` (2D padding mask, or 4D in the attention backend's
        form), ``labels`` [B,L], ``padding`` [B,L], ``image_start`` [B], ``has_image`` [B],
        ``vis`` (projected slots), ``layout`` (the masks, or None), ``jepa_ran``, and
        ``positions`` / ``index_of`` (None, see below). ``run_jepa=None`` draws the lambda
        coin from ``generator``; the default False gives the unmasked sequence (inference).

        ``skip_dropped`` (a masked step only): leave out the dropped slots, which no query
        attends (:func:`attn_mask.visible_positions`). ``embeds``, ``mask``, ``labels`` and
        ``padding`` then cover the L' kept positions; ``positions`` [B,L'] are their places in
        the full sequence (the LLM's position ids) and ``index_of`` [B,L] maps a full-sequence
        place to its kept index. Every loss is the same as on the full sequence.
        """
        text_index, slot_index, is_visual, image_start, has_image, length = splice_indices(
            batch["input_ids"], self.image_token_id, self.num_slots)
        feats = batch.get("image_features")  # F_ctx output computed once by the caller, or:
        if feats is None:
            feats = self.context_encoder(batch["images"])
        vis = self.proj(feats.to(self.proj[0].weight.dtype))  # [B,N,d]
        jepa = self.sampler is not None and bool(has_image.all())
        if jepa and run_jepa is None:
            jepa = jepa_coin(generator, self.cfg.jepa_lambda)
        elif jepa:
            jepa = bool(run_jepa)
        layout = None
        if jepa:
            masks_from = mask_generator if mask_generator is not None else generator
            layout = self.sampler(batch["input_ids"].shape[0], generator=masks_from).to(vis.device)
            latent = self.z + self.phi if self.cfg.pos_embed else self.z
            vis = insert_latent(vis, layout.target_union, latent)
        slots = vis
        if self.task_tokens is not None:  # VisPer-LM: the task tokens follow the image slots
            slots = torch.cat([vis, self.task_tokens().to(vis.dtype).expand(vis.shape[0], -1, -1)], 1)
        embeds, padding, labels = self._splice(batch, slots, text_index, slot_index, is_visual)
        positions = self._kept_positions(layout, image_start, length, labels) if skip_dropped else None
        mask = self._attention_mask(layout, image_start, length, padding, embeds.dtype, positions)
        index_of = None
        if positions is not None:  # the rest of the step sees the kept positions only
            kept = torch.arange(positions.shape[1], device=positions.device).expand_as(positions)
            index_of = torch.zeros_like(labels).scatter_(1, positions, kept)
            embeds = embeds.gather(1, positions[..., None].expand(-1, -1, embeds.shape[-1]))
            padding, labels = padding.gather(1, positions), labels.gather(1, positions)
        return dict(embeds=embeds, mask=mask, labels=labels, padding=padding, vis=vis,
                    image_start=image_start, has_image=has_image, layout=layout, jepa_ran=jepa,
                    positions=positions, index_of=index_of)

    def _splice(self, batch, vis, text_index, slot_index, is_visual):
        """Token embeddings with the visual slots spliced in; padding and labels to match."""
        input_ids = batch["input_ids"]
        safe_ids = input_ids.masked_fill(input_ids == self.image_token_id, 0)
        tok = self.llm.get_input_embeddings()(safe_ids)  # Gemma2 scales inside; image slots not
        gather_text = text_index.clamp(min=0)
        text = tok.gather(1, gather_text[..., None].expand(-1, -1, tok.shape[-1]))
        visual = vis.gather(1, slot_index[..., None].expand(-1, -1, vis.shape[-1]))
        embeds = torch.where(is_visual[..., None], visual.to(text.dtype), text)
        real = batch["attention_mask"].bool().gather(1, gather_text) & (text_index >= 0)
        padding = real | is_visual
        labels = batch["labels"].gather(1, gather_text).masked_fill(~real, -100)
        return embeds, padding, labels

    def _kept_positions(self, layout, image_start, length, labels):
        """The positions a masked step computes (:func:`attn_mask.visible_positions`), or None
        (unmasked step, or nothing to leave out). A dropped slot whose output predicts a
        supervised label stays."""
        if layout is None:
            return None
        needed = F.pad(labels[:, 1:] != -100, (0, 1))
        positions = visible_positions(layout, image_start, length, needed)
        return None if positions.shape[1] == length else positions

    def _attention_mask(self, layout, image_start, length, padding, dtype, positions=None):
        """The 4D mask of a JARVIS or bidirectional-visual step, in the form the attention
        backend takes: bool for SDPA (what HF itself hands SDPA on LLaVA's causal steps, so
        both run the same kernel at the same speed), additive for eager (which ignores a bool
        mask, DESIGN §5), a BlockMask for FlexAttention; only at ``positions`` if given.
        Otherwise the plain 2D padding mask (the HF causal path, as LLaVA's release runs)."""
        has = image_start < length
        if layout is None and not (self.bidirectional_visual and has.any()):
            return padding.long()
        starts = image_start if layout is not None else torch.where(has, image_start, 0)  # text-only: no span
        kwargs = dict(positions=positions) if layout is not None else dict(num_visual=self.num_visual,
                                                                            bidirectional_visual=True)
        impl = self.llm.config._attn_implementation
        if impl == "eager" and (layout is not None or has.all()):  # built additive, in one go
            return build_additive_mask(layout, starts, length, padding,
                                       dtype=_mask_dtype(dtype, padding.device), **kwargs)
        mask = build_attention_mask(layout, starts, length, padding, **kwargs)
        if layout is None and not has.all():  # rows without an image stay purely causal
            causal = build_attention_mask(None, starts, length, padding)
            mask = torch.where(has[:, None, None, None], mask, causal)
        if impl == "flex_attention":
            return to_block_mask(mask)
        return mask if impl == "sdpa" else to_additive(mask, _mask_dtype(dtype, padding.device))

    def train(self, mode: bool = True):
        super().train(mode)
        for enc in (self.context_encoder, self.target_encoder):
            if enc is not None:
                enc.eval()  # frozen encoders never leave eval mode (VisPer's targets: same)
        return self


def _mask_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype attention will run in: autocast's if active, else the embeddings'."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return dtype
