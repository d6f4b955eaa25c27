import numba
import pytest


@pytest.fixture
def restore_numba_threads():
    """Tests that change Numba's thread count put it back."""
    n = numba.get_num_threads()
    yield
    numba.set_num_threads(n)
