"""Deploy mode: bundle the project, hash it, register and upload it, wait for workers."""
