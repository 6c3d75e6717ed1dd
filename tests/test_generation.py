"""The shared generation loop: the CUDA-graph decoder against each model's eager `generate`."""

import pytest
import torch

from tests.helpers import small_lm
from tests.models.large_helpers import tiny_model
from xlstm_triton.generation import CUDAGraphDecoder


def test_graph_decoder_needs_a_cuda_model():
    with pytest.raises(ValueError, match="CUDA device, got cpu"):
        CUDAGraphDecoder(small_lm(), batch_size=2)


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["xlstm", "xlstm_large"])
def test_gpu_graph_decoder_matches_generate(family):
    """Greedy decoding replayed from one captured step gives `generate`'s tokens, for both model
    families, and a second prompt through the same graph as well."""
    model = small_lm((1,), device="cuda") if family == "xlstm" else tiny_model("cuda").eval()
    vocab = model.config.vocab_size
    decoder = CUDAGraphDecoder(model, batch_size=3, temperature=0.0)
    for S in (9, 21):
        prompt = torch.randint(0, vocab, (3, S), device="cuda")
        expected = model.generate(prompt, 7, temperature=0.0)
        assert torch.equal(decoder.generate(prompt, 7), expected)
    with pytest.raises(ValueError, match="expected batch size 3"):
        decoder.generate(torch.zeros(2, 4, dtype=torch.long, device="cuda"), 3)
