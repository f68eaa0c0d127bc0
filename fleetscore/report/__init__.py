"""The run report: one self-contained HTML file with plots a person would rather look at than read.

- `data`: `load_report_data(engine, store, run_id)` reads SQL (and, given a blob store, the prediction
  files) into a `ReportData` of plain DataFrames.
- `plots`: matplotlib figures of that data, as base64 PNG.
- `html`: `render_report(data)`, the page.
- `write`: `write_report(engine, out, ...)`, the three in a row, written to a file.

All times in the database are epoch ms UTC; the report shows them as UTC ISO-8601.
"""
