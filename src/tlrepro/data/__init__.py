"""Floor 2: datasets from download to split: index, labels, leakage audit, tf.data pipelines, stain normalization."""
