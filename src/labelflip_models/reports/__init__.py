"""Human-readable reports of labelflip runs: heatmaps, trends, a Markdown summary and one HTML page.

One job per module: `load` finds and validates run files, `group` organises them by dataset,
`names` fixes the image file names, `fmt`/`tables` turn numbers into table cells, `plots` draws,
`markdown`/`html` render, `write` puts everything on disk.
"""

from .load import load_runs, load_strength
from .write import write_report

__all__ = ["load_runs", "load_strength", "write_report"]
