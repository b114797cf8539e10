"""weights2data: approximate a model's finetuning data from its base and finetuned weights."""
