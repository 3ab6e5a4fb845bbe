"""One run of a model on a dataset, as the CLI and the gate both make it: `evaluate` attacks images or probes with
noise, `results` builds and writes the one schema of `result.json` / `noise.json`."""
