"""The pytest regression gate: profiles and their cases (`profiles`), settings from options and ini keys
(`config`), running a case (`cases`), baseline files (`baselines`), the statistical checks (`decisions`), runs
shared across xdist workers (`shared_runs`, `xdist_scheduling`), what result files say of each model
(`models_under_test`), and the pytest side: hooks and options (`plugin`) and fixtures (`fixtures`)."""
