"""Model-family plugins of the fine-tuning skeleton (:mod:`muonft.train.plugins`)."""
