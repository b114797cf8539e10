"""Per-example scores of the seed texts that need no gradients: two-model token statistics."""
