"""Log axes over short spans (an annealing plot's steps and branch tokens) carry at least
two readable labels, none overlapping its neighbour (matplotlib's default labels every
minor tick near one decade, and 3x10^2 ran into 4x10^2)."""

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jscale.fit.plots import plain_log_ticks


@pytest.mark.parametrize("span", [(38, 850), (8e4, 1.7e6), (3, 2e4), (1e2, 1e7)])
def test_labels_of_a_log_axis_do_not_overlap(span):
  fig = Figure(figsize=(5.5, 4))
  ax = fig.subplots()
  ax.plot(span, (2.0, 3.0))
  ax.set(xscale="log")
  plain_log_ticks(ax.xaxis)
  renderer = FigureCanvasAgg(fig).get_renderer()
  fig.draw(renderer)
  labels = sorted((t for t in ax.xaxis.get_ticklabels(which="both")
                   if t.get_visible() and t.get_text() and
                   span[0] <= t.get_position()[0] <= span[1]),
                  key=lambda t: t.get_position()[0])
  assert len(labels) >= 2, [t.get_text() for t in labels]
  boxes = [t.get_window_extent(renderer) for t in labels]
  for left, right in zip(boxes, boxes[1:]):
    assert left.x1 < right.x0, [t.get_text() for t in labels]
