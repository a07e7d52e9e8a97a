"""Floor 1: params.yaml and its schema, every path, safe writes, errors meant for people."""
