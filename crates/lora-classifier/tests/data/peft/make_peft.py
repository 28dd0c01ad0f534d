import torch, json, os
from transformers import AutoModelForSequenceClassification
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
F='/work/shared/fixtures'
torch.manual_seed(0)
out_root = '/tmp/pc/peft'
cases = {
  'bert-dense-key-all': ('bert', dict(r=2, lora_alpha=6, target_modules=['dense','key'], bias='all', lora_dropout=0.1)),
  'gpt2-cfc-rslora-loraonly': ('gpt2', dict(r=3, lora_alpha=5, target_modules=['c_fc','c_proj'], bias='lora_only', use_rslora=True, fan_in_fan_out=True)),
}
for name, (arch, kw) in cases.items():
    base = AutoModelForSequenceClassification.from_pretrained(f'{F}/{arch}-tiny-lora/base')
    m = get_peft_model(base, LoraConfig(task_type='SEQ_CLS', **kw))
    with torch.no_grad():
        for n, p in m.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    m.eval()
    e = load_file(f'{F}/{arch}-tiny-lora/expected.safetensors')
    with torch.no_grad():
        logits = m(input_ids=e['input_ids'], attention_mask=e['attention_mask']).logits
    d = f'{out_root}/{name}'
    m.save_pretrained(d)
    json.dump({'fixture': f'{arch}-tiny-lora', 'logits': logits.tolist(), 'made_with': 'transformers 5.24.0, peft 0.21.2, torch 2.15.0 (CPU, float32)'}, open(f'{d}/expected_logits.json','w'), indent=1)
    print(name, os.listdir(d), logits)
