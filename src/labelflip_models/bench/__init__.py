"""Speed: tables, baselines and regression compares of pytest-benchmark reports (`report`), and the throughput of
training and attacks on synthetic data (`throughput`)."""
