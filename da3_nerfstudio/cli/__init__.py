"""Console tools of the project (``da3-process-data``)."""
