# The gate's options and fixtures come from the installed plugin (labelflip_models.gate.plugin,
# registered through the pytest11 entry point); pytester is for the tests that run the gate itself.
pytest_plugins = ["pytester"]


def pytest_configure(config):
    # This repo's unit tests use torch throughout: under xdist each worker takes its share of the cores.
    workers = getattr(config, "workerinput", {}).get("workercount")
    if workers:
        from labelflip_models.devices import share_cpu_threads

        share_cpu_threads(int(workers))
