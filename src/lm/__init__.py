"""The project's own small causal base LM (GPT-2 architecture, pretrained offline on WordNet text)."""
