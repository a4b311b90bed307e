"""muonft: fine-tune pretrained models with Muon and measure the optimizer mismatch."""

__version__ = "0.1.0"
