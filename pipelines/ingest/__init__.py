"""The ingest job: the manifest, the Ray Data adapter that runs the stages, and the one writer."""
