"""Model loading, the tiny-model factory, log-probs, the vLLM engine builder and reward-model scoring."""
