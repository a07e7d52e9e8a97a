"""Floor 4: a study run (rows, repeats, start_from, init_from), the lin2024 grid, multi-level transfer."""
