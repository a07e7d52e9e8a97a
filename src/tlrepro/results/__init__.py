"""Floor 3: figures with confidence intervals, the papers' figures beside ours, plots."""
