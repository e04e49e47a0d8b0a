"""sanitize_boxes on arbitrary input: whatever comes in, what is kept is valid and every drop is counted."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from structured.data.validate import ValidationReport, sanitize_boxes, unknown_class_error

coordinates = st.floats(min_value=-1e4, max_value=1e4, width=32) | st.sampled_from([np.nan, np.inf, -np.inf])


@settings(max_examples=200, deadline=None)
@given(boxes=arrays(np.float32, st.tuples(st.integers(0, 12), st.just(4)), elements=coordinates),
       height=st.integers(1, 500), width=st.integers(1, 500))
def test_kept_boxes_are_valid_inside_and_drops_are_counted(boxes: np.ndarray, height: int, width: int) -> None:
    report = ValidationReport()
    clipped, keep = sanitize_boxes(boxes, (height, width), "img.jpg", report)
    kept = clipped[keep]
    assert np.isfinite(kept).all()
    assert (kept[:, 2] > kept[:, 0]).all() and (kept[:, 3] > kept[:, 1]).all()
    assert (kept >= 0).all() and (kept[:, [0, 2]] <= width).all() and (kept[:, [1, 3]] <= height).all()
    dropped = int((~keep).sum())
    assert report.counts["non_finite_box"] + report.counts["degenerate_box"] == dropped
    assert all("img.jpg" in message for message in report.messages)
    inside = np.isfinite(boxes).all(1) & (boxes >= 0).all(1) & (boxes[:, [0, 2]] <= width).all(1) & (boxes[:, [1, 3]] <= height).all(1)
    np.testing.assert_array_equal(clipped[inside], boxes[inside])


def test_unknown_boxes_size_skips_clipping_and_summary_is_bounded() -> None:
    report = ValidationReport()
    boxes = np.array([[-5, -5, 10, 10], [3, 3, 1, 8]] * 15, dtype=np.float32)
    clipped, keep = sanitize_boxes(boxes, None, "a.xml", report)
    assert keep.tolist() == [True, False] * 15 and clipped[0].tolist() == [-5, -5, 10, 10]
    summary = report.summary("source")
    assert summary.startswith("source: 15 degenerate_box") and "... and" not in summary
    for index in range(10):
        report.add("x", f"message {index}")
    assert "... and 5 more" in report.summary("source")
    assert "known: ['a', 'b']" in str(unknown_class_error("c", ["b", "a"], "f.xml"))
