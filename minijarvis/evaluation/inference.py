"""Inference: greedy generation and option scoring, with the training-time attention layout.

Both build the prompt with the LLM's chat template (``data.llava.encode_prompt``) and splice the
image exactly as training does (``JarvisModel.prepare_inputs``), so a JARVIS model keeps its
bidirectional visual attention at inference, as the release does.
"""
from __future__ import annotations

import functools

import torch

from minijarvis.data.llava import encode_prompt, encode_reply, stop_token_ids


def _batch(model, ids: list[list[int]], images: torch.Tensor | None, labels=None) -> dict:
    """Right-padded batch of token rows (one image per row, or none)."""
    bsz, longest = len(ids), max(len(r) for r in ids)
    pad = model.tokenizer.pad_token_id or 0
    input_ids = torch.full((bsz, longest), pad, dtype=torch.long)
    attention = torch.zeros((bsz, longest), dtype=torch.long)
    lab = torch.full((bsz, longest), -100, dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, :len(row)] = torch.tensor(row)
        attention[i, :len(row)] = 1
        if labels is not None:
            lab[i, :len(row)] = torch.tensor(labels[i])
    device = next(model.proj.parameters()).device
    has_image = images is not None
    if images is None:
        images = torch.zeros(bsz, 3, model.image_size, model.image_size)
    return dict(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                labels=lab.to(device), images=images.to(device),
                has_image=torch.full((bsz,), has_image, device=device))


def _step_mask(x: dict, total: int, dtype) -> torch.Tensor:
    """Mask for one decoding step: the new token sees every real earlier token."""
    device = x["embeds"].device
    if x["mask"].dim() == 2:
        return torch.ones(1, total, dtype=torch.long, device=device)
    if x["mask"].dtype == torch.bool:  # SDPA's form
        return torch.ones(1, 1, 1, total, dtype=torch.bool, device=device)
    return torch.zeros(1, 1, 1, total, dtype=dtype, device=device)


def _stop_ids(model) -> set[int]:
    """Token ids that end an answer: the template's end-of-turn markers and EOS
    (``data.llava.stop_token_ids``), plus the LLM's own generation config (Gemma's <end_of_turn>...)."""
    extra = getattr(model.llm.generation_config, "eos_token_id", None)
    extra = set(extra) if isinstance(extra, (list, tuple)) else {extra}
    return {i for i in set(stop_token_ids(model.tokenizer)) | extra if i is not None}


def next_token(logits: torch.Tensor, num_tokens: int) -> int:
    """Greedy choice among the tokenizer's ``num_tokens`` ids: rows of the LM head past them
    (a table padded beyond the vocabulary, the ids VisPer-LM's task tokens get on export) name no
    token and are never a prediction (export.llava suppresses the same ids)."""
    return int(logits[:num_tokens].float().argmax())


@torch.no_grad()
def generate(model, images: torch.Tensor | None, prompts: list[str],
             max_new_tokens: int = 32) -> list[str]:
    """Greedy decoding, one prompt at a time (no padding to get wrong), with a KV cache.

    ``images``: float [B,3,S,S] in [0,1] at ``model.image_size`` (``data.images.load_image``), or
    None for text-only prompts. Returns the decoded continuations without special tokens.
    """
    tok, llm = model.tokenizer, model.llm
    eos = _stop_ids(model)
    answers = []
    for i, prompt in enumerate(prompts):
        ids = encode_prompt(tok, prompt, has_image=images is not None)
        x = model.prepare_inputs(_batch(model, [ids], None if images is None else images[i:i + 1]))
        out = llm(inputs_embeds=x["embeds"], attention_mask=x["mask"], use_cache=True)
        past, total, new = out.past_key_values, x["embeds"].shape[1], []
        for _ in range(max_new_tokens):
            nxt = next_token(out.logits[0, -1], len(tok))
            if nxt in eos:
                break
            new.append(nxt)
            total += 1
            emb = llm.get_input_embeddings()(torch.tensor([[nxt]], device=x["embeds"].device))
            out = llm(inputs_embeds=emb, attention_mask=_step_mask(x, total, emb.dtype),
                      past_key_values=past, use_cache=True)
            past = out.past_key_values
        answers.append(tok.decode(new, skip_special_tokens=True).strip())
    return answers


@functools.lru_cache(maxsize=4096)
def _option_rows(tok, template: str | None, prompt: str, opts: tuple[str, ...], has_image: bool):
    """Each option as training saw a reply: its (ids, labels) row after the prompt, and None.
    When every option is one labelled token after the same ids (option letters), the first
    option's row alone, with the options' token ids: their scores all come from that row's
    last position (causal attention: what precedes the reply does not see it).
    Cached, since benchmarks repeat prompts (ShapesBench's 4,000 items hold about 2,000);
    ``template``, the tokenizer's chat template, is part of the key. Rows are tuples: shared."""
    rows, labels = [], []
    for opt in opts:
        try:
            ids, lab = encode_reply(tok, prompt, opt, has_image=has_image)
        except ValueError as e:
            raise ValueError(f"option {opt!r}: {e}") from None
        rows.append(tuple(ids))
        labels.append(tuple(lab))
    one_token = all(sum(x != -100 for x in lab) == 1 and lab[-1] != -100 and ids[:-1] == rows[0][:-1]
                    for ids, lab in zip(rows, labels))
    if len(rows) > 1 and one_token:
        return tuple(rows[:1]), tuple(labels[:1]), tuple(ids[-1] for ids in rows)
    return tuple(rows), tuple(labels), None


def _row_scores(model, images, rows: list, labels: list, owner: torch.Tensor, tokens: list):
    """Summed log-likelihood of each row's labelled tokens, and their number: one forward for all
    rows, the LM head on the labelled positions only. Row r shows image ``owner[r]`` of
    ``images``, each encoded once (or none when ``images`` is None). A row with ``tokens[r]``
    (options that differ only in their one labelled token) scores each of those ids at its
    labelled position instead. Returns (total, count), one entry per score, in row order."""
    has_image = images is not None
    batch = _batch(model, rows, images[owner] if has_image else None, labels)
    # F_ctx once per prompt (text-only rows: once, on _batch's blank image), not once per row
    shown = images.to(batch["images"].device) if has_image else batch["images"][:1]
    batch["image_features"] = model.context_encoder(shown)[owner if has_image else torch.zeros_like(owner)]
    x = model.prepare_inputs(batch)
    hidden = model.llm.model(inputs_embeds=x["embeds"], attention_mask=x["mask"], use_cache=False).last_hidden_state
    logits, targets, keep = model.supervised_logits(hidden, x["labels"])
    logp_all = logits.float().log_softmax(-1)
    logp = logp_all.gather(-1, targets[:, None])[:, 0]
    row = torch.arange(len(rows), device=keep.device)[:, None].expand_as(keep)[keep]
    total = torch.zeros(len(rows), device=logp.device).index_add_(0, row, logp)
    count = keep.sum(1).to(total.dtype)
    first = count.long().cumsum(0) - count.long()  # each row's first labelled position in logits
    totals = [total[r:r + 1] if alt is None else logp_all[first[r], list(alt)] for r, alt in enumerate(tokens)]
    counts = [count[r:r + 1] if alt is None else count.new_ones(len(alt)) for r, alt in enumerate(tokens)]
    return torch.cat(totals), torch.cat(counts)


@torch.no_grad()
def score_options(model, images: torch.Tensor | None, prompts: list[str],
                  options: list[list[str]], normalize: bool = False, max_rows: int = 32) -> list[torch.Tensor]:
    """Log-likelihood of each answer option after its prompt: one float tensor [n_options] per
    prompt. ``normalize=True`` divides by the option's token count (length-fair scores).

    Every (prompt, option) pair is one row, except that options of one token each after the same
    ids (letters) share their prompt's one row (:func:`_option_rows`); whole prompts are grouped
    into forwards of about ``max_rows`` rows (a prompt with more rows gets a forward of its own),
    so a small model runs a few calls per batch instead of one per prompt. Scores do not depend
    on the grouping."""
    tok = model.tokenizer
    per_prompt = []
    for i, (prompt, opts) in enumerate(zip(prompts, options)):
        try:
            per_prompt.append(_option_rows(tok, tok.chat_template, prompt, tuple(opts), images is not None))
        except ValueError as e:
            raise ValueError(f"prompt {i}: {e}") from None
    scores, start = [], 0
    while start < len(prompts):
        end, n = start + 1, len(per_prompt[start][0])  # whole prompts, up to max_rows rows
        while end < len(prompts) and n + len(per_prompt[end][0]) <= max_rows:
            n += len(per_prompt[end][0])
            end += 1
        group = per_prompt[start:end]
        owner = torch.arange(len(group)).repeat_interleave(torch.tensor([len(rows) for rows, _, _ in group]))
        total, count = _row_scores(model, None if images is None else images[start:end],
                                   [r for rows, _, _ in group for r in rows],
                                   [lab for _, labs, _ in group for lab in labs], owner,
                                   [alt for rows, _, alt in group for _ in rows])
        scores += list((total / count if normalize else total).cpu().split([len(o) for o in options[start:end]]))
        start = end
    return scores
