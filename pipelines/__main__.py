from pipelines.flows.cli import entrypoint

entrypoint()
