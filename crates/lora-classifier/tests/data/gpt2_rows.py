# HF's GPT2ForSequenceClassification on rows without padding and with an eos inside the text.
# (A row with no unmasked token is left out: HF's eager and sdpa attention disagree on it.)
import json, torch
from transformers import AutoModelForSequenceClassification
F = '/work/shared/fixtures/gpt2-tiny-lora/base'
m = AutoModelForSequenceClassification.from_pretrained(F); m.eval()
ids = torch.tensor([[464, 5290, 3807, 314, 423, 1775], [32, 50256, 3867, 2646, 50256, 50256], [3673, 2089, 379, 477, 13, 11]])
mask = torch.tensor([[1]*6, [1, 1, 1, 1, 0, 0], [1]*6])
with torch.no_grad():
    logits = m(input_ids=ids, attention_mask=mask).logits
json.dump({'input_ids': ids.tolist(), 'attention_mask': mask.tolist(), 'logits': logits.tolist(),
           'made_with': 'transformers 5.24.0, torch 2.15.0 (CPU, float32)'}, open('gpt2_rows.json', 'w'), indent=1)
print(logits)
