"""Floor 3: backbones, heads and freeze policies, the frozen-feature cache, training, saved models, prediction."""
