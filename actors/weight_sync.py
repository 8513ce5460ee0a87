"""Moving policy weights from the learner into vLLM engines in place.

The learner exports its state dict (HF parameter names, CPU tensors); each
generation worker hands the tensors to its engine's workers through
`WeightSyncExtension`, a vLLM worker extension that calls vLLM's in-place
`reload_weights` (which also re-packs weights for the CPU kernels).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

EXTENSION_CLS = "actors.weight_sync.WeightSyncExtension"


def export_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A model's parameters and buffers on the CPU, detached, keyed by HF names.

    CPU tensors are not copied: whoever receives them copies once (Ray when it stores an
    actor method's return value, vLLM's loader into its own parameters), and neither
    holds on to them past the next update.

    `lm_head.weight` is always included, tied or not: vLLM's CPU backend keeps a
    repacked copy of the LM head, which an in-place reload of the embeddings alone
    leaves stale (verified: greedy outputs diverge from transformers without it).
    """
    out = {name: t.detach().to("cpu").contiguous() for name, t in model.state_dict().items()}
    if "lm_head.weight" not in out and getattr(model.config, "tie_word_embeddings", False):
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return out


class WeightSyncExtension:
    """Mixed into vLLM's worker class (`worker_extension_cls`); runs in the engine's workers."""

    def load_policy_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Load weights in place; returns how many tensors were given."""
        items = list(named_tensors)
        self.reload_weights(weights_iterator=iter(items))
        return len(items)
