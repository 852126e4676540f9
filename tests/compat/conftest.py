"""The compat tests run tiny models: one thread each, so a loaded machine's oversubscribed threads do not slow them
tenfold."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
