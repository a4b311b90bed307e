"""Fine-tune any HF classifier with LoRA (PEFT) and Muon inside transformers' Trainer.

    python examples/trainer_peft_lora.py --model sentence-transformers/all-MiniLM-L6-v2

Muon steps the LoRA factors (matrices); the new classifier head, embeddings, norms and biases go
to the AdamW groups of the same optimizer (`muonft inspect --init hf:MODEL` shows the split).
Prints one JSON line: the training loss at the start and at the end.
"""

import argparse
import json

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainingArguments

from muonft.integrations.hf import MuonTrainer

p = argparse.ArgumentParser()
p.add_argument("--model", required=True, help="HF model id or local directory")
p.add_argument("--out", default="lora-out")
p.add_argument("--steps", type=int, default=30)
p.add_argument("--lr", type=float, default=1e-3, help="Muon's lr (the LoRA factors)")
p.add_argument("--adamw-lr", type=float, default=1e-3, help="the new head's lr")
a = p.parse_args()

torch.manual_seed(0)
tok = AutoTokenizer.from_pretrained(a.model)
model = AutoModelForSequenceClassification.from_pretrained(a.model, num_labels=2)
model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, task_type="SEQ_CLS",
                                         target_modules=["query", "value"]))
texts = [f"the movie was {w}" for w in ["great", "awful", "good", "bad"] * 16]
enc = tok(texts, padding="max_length", max_length=12, truncation=True)
data = [{"input_ids": ids, "attention_mask": m, "labels": y}  # any list of examples
        for ids, m, y in zip(enc["input_ids"], enc["attention_mask"], [1, 0, 1, 0] * 16)]
args = TrainingArguments(a.out, max_steps=a.steps, per_device_train_batch_size=16,
                         learning_rate=a.lr, lr_scheduler_type="constant", logging_steps=1,
                         save_strategy="no", report_to=[],
                         use_cpu=not torch.cuda.is_available(), disable_tqdm=True)
trainer = MuonTrainer(model=model, args=args, train_dataset=data,
                      muon_options={"adamw_lr": a.adamw_lr})  # AdamW groups: their own lr
trainer.train()
losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
print(json.dumps({"first_loss": losses[0], "last_loss": losses[-1]}))
