"""Deploy mode: bundle the project, hash it, register and upload it, wait for workers."""

from vastrpc.deploy.loader import cli_deploy, load_deployments

__all__ = ["cli_deploy", "load_deployments"]
