"""θ0/θf compatibility and synthetic checkpoints."""
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from src.errors import UserError
from src.gradients.last_layer import flat_layer, layer_delta
from src.models import ModelPair, check_compatible, checkpoint_alphas, interpolate


def bert(hidden=16, labels=3, seed=0):
    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                                                    intermediate_size=32, num_labels=labels))


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(UserError, match="differ in shape at 'bert.embeddings"):
        check_compatible(bert(16).state_dict(), bert(32).state_dict())
    with pytest.raises(UserError, match="classifier"):
        check_compatible(bert(labels=3).state_dict(), bert(labels=4).state_dict())


def test_missing_parameters_are_a_clear_error():
    s0, sf = bert().state_dict(), bert().state_dict()
    del sf["classifier.bias"]
    with pytest.raises(UserError, match="present in only one"):
        check_compatible(s0, sf)


def test_checkpoints_lie_on_the_line_from_theta0_to_thetaf():
    s0, sf = bert(seed=0).state_dict(), bert(seed=1).state_dict()
    assert checkpoint_alphas(4) == [0.25, 0.5, 0.75, 1.0]
    end = interpolate(s0, sf, 1.0)
    mid = interpolate(s0, sf, 0.5)
    for k, v in s0.items():
        if v.is_floating_point():
            torch.testing.assert_close(end[k], sf[k])
            torch.testing.assert_close(mid[k], (s0[k] + sf[k]) / 2)
        else:
            assert torch.equal(end[k], v)  # integer buffers are not interpolated
    with pytest.raises(UserError):
        checkpoint_alphas(0)


def test_pair_load_and_fresh_copy():
    m0, mf = bert(seed=0), bert(seed=1)
    pair = ModelPair(bert(seed=2), None, m0.state_dict(), mf.state_dict(), "classifier", "key")
    torch.testing.assert_close(pair.load(1.0).classifier.weight, mf.classifier.weight)
    copy = pair.fresh(0.0)
    torch.testing.assert_close(copy.classifier.weight, m0.classifier.weight)
    copy.classifier.weight.data.add_(1.0)  # training the copy must not touch the pair
    torch.testing.assert_close(pair.model.classifier.weight, mf.classifier.weight)
    # the head's delta in the gradient rows' layout: 3 classes x (16 inputs + bias)
    assert flat_layer(*layer_delta(pair.state0, pair.statef, "classifier", with_bias=True)).shape == (3 * 17,)
