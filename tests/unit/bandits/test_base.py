"""Helpers of processor.bandits.base shared by the keyed bandits and the safety monitor."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.bandits.base import unique_rows


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    n_rows=st.sampled_from([1, 7, 300, 5_000, 100_000]),
    size=st.integers(0, 400),
    dtype=st.sampled_from([np.int64, np.int32, np.intp]),
)
def test_unique_rows_equals_numpy_unique(
    data: st.DataObject, n_rows: int, size: int, dtype: type
) -> None:
    """Both ways (a presence table for tables not much larger than the batch, else a sort)
    give np.unique's sorted rows and inverse, in the rows' dtype."""
    rows = np.array(
        data.draw(st.lists(st.integers(0, n_rows - 1), min_size=size, max_size=size)), dtype=dtype
    )
    touched, inverse = unique_rows(rows, n_rows)
    want, want_inverse = np.unique(rows, return_inverse=True)
    assert touched.dtype == want.dtype
    assert np.array_equal(touched, want)
    assert np.array_equal(inverse, want_inverse.reshape(-1))
    assert np.array_equal(touched[inverse], rows)
