import os

import pytest
import torch

# Without a GPU, run the Triton kernels through Triton's CPU interpreter (must be set before triton is imported).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import flowkern  # noqa: E402
from flowkern import backend as fk_backend  # noqa: E402

def pytest_report_header(config):
    st = flowkern.cuda_status()
    return [f"flowkern from {os.path.dirname(flowkern.__file__)}; native: {flowkern.native_available()}",
            f"flowkern CUDA: built={st['built']} archs={st['archs']!r} available={st['available']} ({st['reason']})",
            f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')}"]


def pytest_sessionstart(session):
    # A test run must exercise the native kernels: an unbuilt source checkout would silently test torch only.
    if not flowkern.native_available() and os.environ.get("FLOWKERN_ALLOW_NO_NATIVE") != "1":
        raise pytest.UsageError("flowkern._C is not built: run `pip install .` (or `pip install -e .`) first, "
                                "or set FLOWKERN_ALLOW_NO_NATIVE=1 to test the torch reference alone")


@pytest.fixture(autouse=True)
def _seed_and_reset_backend():
    torch.manual_seed(0)
    previous = fk_backend.get_backend()
    yield
    fk_backend.set_backend(previous)
