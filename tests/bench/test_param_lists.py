"""The parameter lists have the shapes of the models they are named after."""
import pytest
import torch

from flatmin_kernels.bench import param_lists


@pytest.mark.parametrize("name, tensors, elements", [
    ("resnet50", 161, 25_557_032),        # torchvision resnet50
    ("gpt2-small", 148, 124_439_808),     # Hugging Face gpt2
    ("gpt2-medium", 292, 354_823_168),    # Hugging Face gpt2-medium
    ("llama-1b", 146, 1_235_814_400),     # Llama-3.2-1B (tied embeddings)
    ("flat-10m", 100, 10_000_000),
    ("tiny-1000", 1000, 16_000),
    ("tiny-10000", 10_000, 160_000),
])
def test_sizes(name, tensors, elements):
    plist = param_lists.get(name)
    assert (plist.tensors, plist.numel) == (tensors, elements)
    assert plist.nbytes(torch.bfloat16) == 2 * elements


def test_model_lists_mix_shapes():
    resnet = param_lists.get("resnet50").shapes
    assert (64, 3, 7, 7) in resnet and (1000, 2048) in resnet and sum(len(s) == 1 for s in resnet) == 107
    gpt2 = param_lists.get("gpt2-small").shapes
    assert gpt2[:2] == ((50257, 768), (1024, 768)) and (768, 2304) in gpt2 and (3072, 768) in gpt2


def test_materialize_is_reproducible_and_allocates_each_tensor():
    plist = param_lists.get("tiny-100")
    a = param_lists.materialize(plist, torch.float32, "cpu", seed=3, scale=0.5)
    b = param_lists.materialize(plist, torch.float32, "cpu", seed=3, scale=0.5)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert len({t.untyped_storage().data_ptr() for t in a}) == 100
    assert max(t.abs().max() for t in a) <= 0.5
    assert [tuple(t.shape) for t in a] == list(plist.shapes)


def test_unknown_list_is_refused():
    with pytest.raises(ValueError, match="unknown parameter list 'bert'; choose from resnet50, gpt2-small"):
        param_lists.get("bert")
