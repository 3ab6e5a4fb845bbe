"""The pytest regression gate: profiles and their cases (`profiles`), settings from options and ini keys
(`config`), running a case (`cases`), baseline files (`baselines`), the practical margins (`margins`), pairing a run
with its baseline image by image (`pairing`), the statistical checks (`decisions`) and their error rates, simulated
(`characteristics`) and on real model changes (`zoo`), runs shared across xdist workers (`shared_runs`,
`xdist_scheduling`), what result files say of each model (`models_under_test`), and the pytest side: hooks and
options (`plugin`) and fixtures (`fixtures`)."""
