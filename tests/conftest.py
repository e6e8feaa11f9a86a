import logging
import warnings

import pytest
import torch

# transformers warns that high_freq_factor should exceed low_freq_factor for Scout's 16/1/1 rope.
logging.getLogger("transformers").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=".*high_freq_factor.*")
torch.set_num_threads(max(1, torch.get_num_threads()))


@pytest.fixture
def tokens_BS() -> torch.Tensor:
    """Two rows of 40 tokens: past several chunk boundaries (8) and the temperature floor (4)."""
    return torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(1))
