"""One optimizer step of the text-only runs on (ids, labels) rows: padded batch, answer-only labels."""
import torch


def text_step(model, opt, pad_id: int, rows) -> float:
    width = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), width), pad_id)
    lab = torch.full((len(rows), width), -100)
    att = torch.zeros(len(rows), width, dtype=torch.long)
    for b, (i_, l_) in enumerate(rows):
        ids[b, :len(i_)], lab[b, :len(l_)], att[b, :len(i_)] = torch.tensor(i_), torch.tensor(l_), 1
    loss = model(input_ids=ids, attention_mask=att, labels=lab).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad()
    return float(loss.detach())


def option_accuracy(model, tok, rows, prompt=lambda r: r["prompt"], reduce="sum") -> dict:
    """Per-task accuracy of scoring each row's options by their answer tokens' log-probability
    (``reduce``: "sum", or "mean" as eval.py scores) after ``prompt(row)``."""
    from minijarvis.data.text import encode_reply
    model.eval()
    hits, counts = {}, {}
    for r in rows:
        scores = []
        for option in r["choices"]:
            ids, lab = encode_reply(tok, prompt(r), option, has_image=False)
            with torch.no_grad():
                lp = model(input_ids=torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
            t = torch.tensor(lab[1:])
            keep = t != -100
            tok_lp = lp[keep].gather(-1, t[keep][:, None])
            scores.append(float(tok_lp.sum() if reduce == "sum" else tok_lp.mean()))
        best = max(range(len(scores)), key=scores.__getitem__)
        hits[r["task"]] = hits.get(r["task"], 0) + int(best == r["answer_index"])
        counts[r["task"]] = counts.get(r["task"], 0) + 1
    model.train()
    return {t: round(hits[t] / counts[t], 2) for t in counts}
