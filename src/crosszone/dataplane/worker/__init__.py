"""Worker nodes: the OpenAI/DeepSeek API over one inference engine."""

from crosszone.dataplane.worker.app import WORKER_KEY, Worker, create_worker_app

__all__ = ["WORKER_KEY", "Worker", "create_worker_app"]
