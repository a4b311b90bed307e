"""Full fine-tuning of an HF classifier with our Muon handed to a plain transformers.Trainer.

    python examples/trainer_full.py --model sentence-transformers/all-MiniLM-L6-v2

`create_optimizer` puts hidden matrices on Muon and embeddings, the head, norms and biases on
AdamW, each group with its own lr and weight decay. Prints the first and last training loss.
"""

import argparse
import json

import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    Trainer,
    TrainingArguments,
)

from muonft.integrations.hf import create_optimizer

p = argparse.ArgumentParser()
p.add_argument("--model", required=True, help="HF model id or local directory")
p.add_argument("--out", default="full-out")
p.add_argument("--steps", type=int, default=30)
p.add_argument("--lr", type=float, default=1e-3, help="Muon's lr (hidden matrices)")
p.add_argument("--adamw-lr", type=float, default=3e-4, help="embeddings, head, norms, biases")
a = p.parse_args()

torch.manual_seed(0)
tok = AutoTokenizer.from_pretrained(a.model)
model = AutoModelForSequenceClassification.from_pretrained(a.model, num_labels=2)
texts = [f"the movie was {w}" for w in ["great", "awful", "good", "bad"] * 16]
enc = tok(texts, padding="max_length", max_length=12, truncation=True)
data = [{"input_ids": ids, "attention_mask": m, "labels": y}  # any list of examples
        for ids, m, y in zip(enc["input_ids"], enc["attention_mask"], [1, 0, 1, 0] * 16)]
opt = create_optimizer(model, lr=a.lr, weight_decay=0.01, adamw_lr=a.adamw_lr,
                       adamw_weight_decay=0.0)
print(opt.partition.table().splitlines()[-1])  # Muon/AdamW counts and optimizer-state size
args = TrainingArguments(a.out, max_steps=a.steps, per_device_train_batch_size=16,
                         lr_scheduler_type="constant", logging_steps=1, save_strategy="no",
                         report_to=[],
                         use_cpu=not torch.cuda.is_available(), disable_tqdm=True)
trainer = Trainer(model=model, args=args, train_dataset=data, optimizers=(opt, None))
trainer.train()
losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
print(json.dumps({"first_loss": losses[0], "last_loss": losses[-1]}))
