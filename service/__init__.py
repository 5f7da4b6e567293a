"""The HTTP service: thin handlers over training/, models/ and the job queue."""
