"""Online embedding + search service on Ray Serve (OpenAI-compatible API, dynamic batching, A/B).

Light on import: Ray Serve and the model are imported by ``fastemb.serve.app`` only.
"""

# The core spec module first: it registers job types, some of which (demo) import ServeJob back from here.
import fastemb.spec  # noqa: E402,F401
