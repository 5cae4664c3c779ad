"""ShiftAddLLM post-training reparameterization and its baselines (RTN, GPTQ, BCQ).

Heavy imports (torch, transformers) happen inside the modules of this package, never in the
simulation side of llm1bit."""
