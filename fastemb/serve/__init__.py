"""Online embedding + search service on Ray Serve (OpenAI-compatible API, dynamic batching, A/B).

Light on import: Ray Serve and the model are imported by ``fastemb.serve.app`` and ``fastemb.serve.deployments``
only.
"""
