"""Your own training loop on Hugging Face accelerate, with our Muon.

    accelerate launch examples/accelerate_loop.py --model sentence-transformers/all-MiniLM-L6-v2

`accelerator.prepare` wraps the model (DDP when launched on several processes) and the
optimizer; Muon orthogonalizes each matrix's momentum on every rank (or once per matrix, split
across ranks, with `distributed=True` under DDP). Prints the first and last loss.
"""

import argparse
import json

import torch
from accelerate import Accelerator
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from muonft.integrations.hf import create_optimizer

p = argparse.ArgumentParser()
p.add_argument("--model", required=True, help="HF model id or local directory")
p.add_argument("--steps", type=int, default=30)
p.add_argument("--lr", type=float, default=1e-3, help="Muon's lr (hidden matrices)")
p.add_argument("--adamw-lr", type=float, default=3e-4, help="embeddings, head, norms, biases")
a = p.parse_args()

torch.manual_seed(0)
accelerator = Accelerator(cpu=not torch.cuda.is_available())
tok = AutoTokenizer.from_pretrained(a.model)
model = AutoModelForSequenceClassification.from_pretrained(a.model, num_labels=2)
words, labels = ["great", "awful", "good", "bad"] * 4, [1, 0, 1, 0] * 4
batch = tok([f"the movie was {w}" for w in words], padding=True, return_tensors="pt")
batch["labels"] = torch.tensor(labels)
opt = create_optimizer(model, lr=a.lr, adamw_lr=a.adamw_lr)
model, opt = accelerator.prepare(model, opt)
batch = {k: v.to(accelerator.device) for k, v in batch.items()}
losses = []
for _ in range(a.steps):
    loss = model(**batch).loss
    accelerator.backward(loss)
    opt.step()
    opt.zero_grad()
    losses.append(float(loss.detach()))
if accelerator.is_main_process:
    print(json.dumps({"first_loss": losses[0], "last_loss": losses[-1]}))
