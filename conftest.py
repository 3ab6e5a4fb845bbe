# The gate's options and fixtures come from the installed plugin (labelflip_models.gate.plugin,
# registered through the pytest11 entry point); pytester is for the tests that run the gate itself.
pytest_plugins = ["pytester"]
