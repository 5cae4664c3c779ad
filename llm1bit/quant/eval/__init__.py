"""Quality of a (quantized) model: perplexity on token windows and zero-shot accuracy through
lm-evaluation-harness."""
