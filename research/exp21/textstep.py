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
