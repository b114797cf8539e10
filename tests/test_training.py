"""Lightning glue keeps input order and trains."""
import torch

from src.options import TrainerOptions, TrainOptions
from src.training import fit_classifier, logits_fn, predict
from tests.test_head_grads import TEXTS, encode, tiny_model

TRAINER = TrainerOptions(accelerator="cpu", devices=1, precision="32-true", progress_bar=False)


def test_predict_returns_outputs_in_input_order_despite_length_sorting():
    model = tiny_model().float()
    tok, _ = encode(TEXTS)
    texts = TEXTS + ["short", "a much much longer text about a very long thing indeed"]
    out = predict(model, tok, texts, logits_fn, batch_size=3, max_length=16, trainer=TRAINER)["logits"]
    for i, t in enumerate(texts):
        ref = model(**tok([t], return_tensors="pt", truncation=True, max_length=16)).logits[0]
        torch.testing.assert_close(out[i], ref.detach(), rtol=1e-4, atol=1e-5)


def test_fit_classifier_reduces_training_loss():
    model = tiny_model().float()
    tok, batch = encode(TEXTS)
    labels = [0, 1, 2, 1]
    ft = TrainOptions(epochs=16, batch_size=4, lr=3e-2, weight_decay=0.0, warmup_ratio=0.1, max_length=16,
                      max_steps=None)
    loss = lambda: torch.nn.functional.cross_entropy(model(**batch).logits, torch.tensor(labels)).item()  # noqa: E731
    before = loss()
    fit_classifier(model, tok, TEXTS, labels, ft, TRAINER, rng=0)
    assert loss() < before / 2
